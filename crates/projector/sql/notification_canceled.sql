-- A canceled notification may never have been projected (it was still queued): insert it.
INSERT INTO notifications (notification_id, priority, title, audience, requested_by, status, accepted_at, send_at, category, body, data, language, translations)
VALUES ($1, $2, $3, $4, $5, 'canceled', $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (notification_id) DO UPDATE SET status = 'canceled'
WHERE notifications.status IN ('scheduled', 'accepted')
