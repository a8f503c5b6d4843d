-- name: error_rate_by_code
-- description: Failed requests by error code, and their share of all requests in the period.
WITH totals AS (
    SELECT count(*) AS requests FROM usage_records
)
SELECT
    e.error_code,
    count(*) AS errors,
    max(t.requests) AS requests,
    CAST(count(*) AS DOUBLE) / max(t.requests) AS error_rate
FROM usage_records AS e
CROSS JOIN totals AS t
WHERE e.outcome = 'error'
GROUP BY e.error_code
ORDER BY errors DESC, e.error_code
