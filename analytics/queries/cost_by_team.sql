-- name: cost_by_team
-- description: Estimated Bedrock cost (USD) per team (the Cognito group team:<name>; "(no team)" for users in none):
-- description: each model's tokens times model_prices, cached answers excluded; users: who asked at all.
-- description: unpriced_tokens counts the tokens of models missing from model_prices (left out of the cost).
-- description: model_prices is a placeholder: the runner replaces the rows of this CTE (analytics.render_query /
-- description: run_query, model_prices={model_id: (input_per_1k, output_per_1k)}); edit them by hand on Athena.
WITH model_prices (model_id, input_per_1k, output_per_1k) AS (
    VALUES ('anthropic.claude-3-haiku-20240307-v1:0', 0.00025, 0.00125)
),
members AS (
    SELECT coalesce(team, '(no team)') AS team, count(DISTINCT user_id) AS users
    FROM usage_records
    GROUP BY coalesce(team, '(no team)')
),
tokens AS (
    SELECT
        coalesce(team, '(no team)') AS team,
        model_id,
        sum(input_tokens) AS input_tokens,
        sum(output_tokens) AS output_tokens
    FROM usage_records
    WHERE outcome <> 'cached'
    GROUP BY coalesce(team, '(no team)'), model_id
)
SELECT
    t.team,
    m.users,
    sum(t.input_tokens) AS input_tokens,
    sum(t.output_tokens) AS output_tokens,
    round(
        coalesce(sum(
            t.input_tokens / 1000.0 * CAST(p.input_per_1k AS DOUBLE)
            + t.output_tokens / 1000.0 * CAST(p.output_per_1k AS DOUBLE)
        ), 0),
        6
    ) AS estimated_cost_usd,
    sum(CASE WHEN p.model_id IS NULL THEN t.input_tokens + t.output_tokens ELSE 0 END) AS unpriced_tokens
FROM tokens AS t
LEFT JOIN model_prices AS p ON p.model_id = t.model_id
JOIN members AS m ON m.team = t.team
GROUP BY t.team, m.users
ORDER BY estimated_cost_usd DESC, t.team
