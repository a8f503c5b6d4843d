-- name: cost_by_model
-- description: What each model cost in dollars (Bedrock's token prices; cached answers cost nothing). A model without a
-- description: known price shows no cost.
-- note: model_prices is a placeholder: aigw analytics (analytics.run_query) fills it from the stack's prices;
-- note: on Athena, edit its rows by hand (model_id, USD per 1K input tokens, USD per 1K output tokens).
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
