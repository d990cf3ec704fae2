-- Scheduling an article again replaces its pending publication job instead of adding one:
-- this index finds an article's pending jobs without scanning the queue.
CREATE INDEX jobs_publish_article_idx ON jobs (((payload->>'article_id')::bigint))
    WHERE state = 'pending' AND kind = 'publish_article';
