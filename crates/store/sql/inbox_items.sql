-- A customer's inbox items in the language they read, for `inbox_page.sql` and
-- `inbox_after.sql`, which follow this with their WHERE, ORDER BY and LIMIT ($1: the customer).
-- The language the customer reads: their preferred language in the customer system, else
-- that of their most recently updated device's locale (`wo-SN` reads `wo`), active devices
-- first. An item shows its text in that language when the notification has it, else its default.
WITH reader AS (
    SELECT coalesce(
        (SELECT c.language FROM customers c WHERE c.customer_id = $1),
        (SELECT lower(split_part(replace(d.locale, '_', '-'), '-', 1))
         FROM devices d
         WHERE d.customer_id = $1 AND d.locale IS NOT NULL
         ORDER BY d.status = 'active' DESC, d.updated_at DESC
         LIMIT 1)) AS language
)
SELECT i.notification_id, i.position,
       coalesce(n.translations -> r.language ->> 'title', n.title) AS title,
       coalesce(n.translations -> r.language ->> 'body', n.body) AS body,
       CASE WHEN n.translations ? r.language THEN r.language ELSE n.language END AS language,
       n.data, n.category, n.priority, i.received_at, i.read_at
FROM inbox i
JOIN notifications n USING (notification_id)
LEFT JOIN reader r ON true
