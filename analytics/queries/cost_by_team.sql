-- name: cost_by_team
-- description: What each team's questions cost in dollars, and how many of its users asked ("(no team)": users in
-- description: none). unpriced_tokens: tokens of models without a known price, left out of the cost.
-- note: model_prices is a placeholder: aigw analytics (analytics.run_query) fills it from the stack's prices;
-- note: on Athena, edit its rows by hand (model_id, USD per 1K input tokens, USD per 1K output tokens).
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
