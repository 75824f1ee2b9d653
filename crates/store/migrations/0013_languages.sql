-- A notification's text in other languages than its own: {"wo": {"title": …, "body": …}}.
-- NULL when it has only one. `language` is the language of title and body, when named.
ALTER TABLE notifications ADD COLUMN language TEXT;
ALTER TABLE notifications ADD COLUMN translations JSONB;
