-- name: refusals_by_reason_and_tier
-- description: Refused requests per refusal_reason (window, monthly) and tier, with the number of users refused.
SELECT
    refusal_reason,
    tier,
    count(*) AS refusals,
    count(DISTINCT user_id) AS users
FROM usage_records
WHERE outcome = 'refused'
GROUP BY refusal_reason, tier
ORDER BY refusal_reason, tier
