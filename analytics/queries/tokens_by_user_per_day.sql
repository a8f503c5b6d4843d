-- name: tokens_by_user_per_day
-- description: Requests and tokens (input, output, total) per user per day (UTC), every outcome included.
SELECT
    CAST(ts AS DATE) AS usage_date,
    user_id,
    count(*) AS requests,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(input_tokens + output_tokens) AS total_tokens
FROM usage_records
GROUP BY CAST(ts AS DATE), user_id
ORDER BY usage_date, user_id
