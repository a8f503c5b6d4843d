-- name: latency_by_model
-- description: How fast each model answered: time to the first word and to the whole answer (ms), median, p95 and p99,
-- description: over answers from the model (not the cache). Percentiles are approximate.
SELECT
    model_id,
    count(*) AS requests,
    approx_percentile(ttft_ms, 0.5) AS ttft_p50_ms,
    approx_percentile(ttft_ms, 0.95) AS ttft_p95_ms,
    approx_percentile(ttft_ms, 0.99) AS ttft_p99_ms,
    approx_percentile(latency_ms, 0.5) AS latency_p50_ms,
    approx_percentile(latency_ms, 0.95) AS latency_p95_ms,
    approx_percentile(latency_ms, 0.99) AS latency_p99_ms
FROM usage_records
WHERE outcome = 'completed'
GROUP BY model_id
ORDER BY model_id
