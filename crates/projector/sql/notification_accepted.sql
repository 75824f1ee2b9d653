INSERT INTO notifications (notification_id, priority, title, audience, requested_by, status, accepted_at, send_at, category, body, data, language, translations)
VALUES ($1, $2, $3, $4, $5, 'accepted', $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (notification_id) DO UPDATE SET status = 'accepted'
WHERE notifications.status = 'scheduled'
