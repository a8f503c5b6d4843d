-- name: tokens_by_model_per_day
-- description: Requests and tokens (input, output, total) per model per day (UTC), every outcome included.
SELECT
    CAST(ts AS DATE) AS usage_date,
    model_id,
    count(*) AS requests,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(input_tokens + output_tokens) AS total_tokens
FROM usage_records
GROUP BY CAST(ts AS DATE), model_id
ORDER BY usage_date, model_id
