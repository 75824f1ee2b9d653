SELECT notification_id, priority, title, requested_by, status, targeted, sent, failed, invalid, expired,
       accepted_at, send_at, fanned_out_at, completed_at
FROM notifications
WHERE notification_id = $1
