-- Inbox items in the language their customer reads, for `inbox_page.sql`, `inbox_after.sql`
-- and `inbox_new.sql`, which follow this with their WHERE, ORDER BY and LIMIT.
-- The language a customer reads: their preferred language in the customer system, else that
-- of their most recently updated device's locale (`wo-SN` reads `wo`), active devices first.
-- An item shows its text in that language when the notification has it, else its default.
SELECT i.customer_id, i.notification_id, i.position,
       coalesce(n.translations -> r.language ->> 'title', n.title) AS title,
       coalesce(n.translations -> r.language ->> 'body', n.body) AS body,
       CASE WHEN n.translations ? r.language THEN r.language ELSE n.language END AS language,
       n.data, n.category, n.priority, i.received_at, i.read_at
FROM inbox i
JOIN notifications n USING (notification_id)
LEFT JOIN LATERAL (
    SELECT coalesce(
        (SELECT c.language FROM customers c WHERE c.customer_id = i.customer_id),
        (SELECT lower(split_part(replace(d.locale, '_', '-'), '-', 1))
         FROM devices d
         WHERE d.customer_id = i.customer_id AND d.locale IS NOT NULL
         ORDER BY d.status = 'active' DESC, d.updated_at DESC
         LIMIT 1)) AS language
) r ON true
