-- name: cost_by_model
-- description: Estimated Bedrock cost (USD) per model: input and output tokens times model_prices, cached answers
-- description: excluded (no model call). A model missing from model_prices has a null cost.
-- description: model_prices is a placeholder: the runner replaces the rows of this CTE (analytics.render_query /
-- description: run_query, model_prices={model_id: (input_per_1k, output_per_1k)}); edit them by hand on Athena.
WITH model_prices (model_id, input_per_1k, output_per_1k) AS (
    VALUES ('anthropic.claude-3-haiku-20240307-v1:0', 0.00025, 0.00125)
),
tokens AS (
    SELECT
        model_id,
        count(*) AS requests,
        sum(input_tokens) AS input_tokens,
        sum(output_tokens) AS output_tokens
    FROM usage_records
    WHERE outcome <> 'cached'
    GROUP BY model_id
)
SELECT
    t.model_id,
    t.requests,
    t.input_tokens,
    t.output_tokens,
    round(
        t.input_tokens / 1000.0 * CAST(p.input_per_1k AS DOUBLE)
        + t.output_tokens / 1000.0 * CAST(p.output_per_1k AS DOUBLE),
        6
    ) AS estimated_cost_usd
FROM tokens AS t
LEFT JOIN model_prices AS p ON p.model_id = t.model_id
ORDER BY estimated_cost_usd DESC NULLS LAST, t.model_id
