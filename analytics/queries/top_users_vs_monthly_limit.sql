-- name: top_users_vs_monthly_limit
-- description: The 100 heaviest users of this month (UTC) against their tier's monthly token limit (their latest tier
-- description: this month).
-- note: tier_limits is a placeholder: aigw analytics fills it from the stack's tiers; on Athena, edit
-- note: its rows by hand (tier, monthlyTokens). A tier missing from it has a null limit.
WITH tier_limits (tier, monthly_tokens) AS (
    VALUES ('free', 100000), ('pro', 2000000)
),
usage_this_month AS (
    SELECT
        user_id,
        max_by(tier, ts) AS tier,
        count(*) AS requests,
        sum(input_tokens + output_tokens) AS used_tokens
    FROM usage_records
    -- Partitions prune (a late record may sit in a later partition on S3), ts decides.
    WHERE concat(year, '-', month) >= date_format(current_date, '%Y-%m')
      AND ts >= CAST(date_trunc('month', current_date) AS TIMESTAMP)
      AND ts < CAST(date_trunc('month', current_date) + INTERVAL '1' MONTH AS TIMESTAMP)
    GROUP BY user_id
)
SELECT
    u.user_id,
    u.tier,
    u.requests,
    u.used_tokens,
    CAST(l.monthly_tokens AS BIGINT) AS monthly_tokens,
    CAST(l.monthly_tokens AS BIGINT) - u.used_tokens AS remaining_tokens,
    round(100.0 * u.used_tokens / NULLIF(CAST(l.monthly_tokens AS DOUBLE), 0), 2) AS pct_of_limit
FROM usage_this_month AS u
LEFT JOIN tier_limits AS l ON l.tier = u.tier
ORDER BY u.used_tokens DESC, u.user_id
LIMIT 100
