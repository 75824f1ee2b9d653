-- The items of several customers, each above its own position, oldest first: what the live
-- streams of the customers a projector batch reached are to send ($1: the customers, $2: the
-- position of each). (`inbox_items.sql` comes first.)
JOIN unnest($1::TEXT[], $2::BIGINT[]) AS w(customer_id, after)
  ON w.customer_id = i.customer_id AND i.position > w.after
ORDER BY i.position
