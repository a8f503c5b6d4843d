-- name: refusals_by_reason_and_tier
-- description: Requests refused by a limit, by reason (window, monthly: the user's own; team, team_window: their
-- description: team's; stack: the gateway's ceiling; contention: too many at once) and tier, with how many users were
-- description: refused.
SELECT
    refusal_reason,
    tier,
    count(*) AS refusals,
    count(DISTINCT user_id) AS users
FROM usage_records
WHERE outcome = 'refused'
GROUP BY refusal_reason, tier
ORDER BY refusal_reason, tier
