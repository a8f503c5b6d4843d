-- name: cache_hit_rate_by_day
-- description: Cache hits over answered requests (outcome completed or cached) per UTC day of ts.
-- description: Refused and failed requests never reach the cache and are left out.
SELECT
    CAST(ts AS DATE) AS usage_date,
    count(*) AS answered,
    count_if(cache_hit) AS cache_hits,
    CAST(count_if(cache_hit) AS DOUBLE) / count(*) AS hit_rate
FROM usage_records
WHERE outcome IN ('completed', 'cached')
GROUP BY CAST(ts AS DATE)
ORDER BY usage_date
