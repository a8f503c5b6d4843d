-- name: cache_hit_rate_by_day
-- description: How often a prepared answer from the cache served the question, per day (UTC), out of the questions
-- description: answered (refused and failed ones never reach the cache).
SELECT
    CAST(ts AS DATE) AS usage_date,
    count(*) AS answered,
    count_if(cache_hit) AS cache_hits,
    CAST(count_if(cache_hit) AS DOUBLE) / count(*) AS hit_rate
FROM usage_records
WHERE outcome IN ('completed', 'cached')
GROUP BY CAST(ts AS DATE)
ORDER BY usage_date
