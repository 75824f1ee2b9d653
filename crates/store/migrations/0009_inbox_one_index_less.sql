-- `inbox_unread` duplicated `inbox_by_position` for unread items, and every new item (they all
-- arrive unread) paid for both. No query needs it: the unread-only page filters on a parameter
-- (`NOT $3 OR read_at IS NULL`), which a partial index cannot serve, the unread count reads all
-- of the customer's items for the newest position anyway, and "mark all read" walks the
-- customer's items by position. A customer's inbox is short; `inbox_by_position` finds it.
DROP INDEX inbox_unread;
