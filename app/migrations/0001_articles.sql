-- Articles. `version` drives optimistic concurrency (ETag/If-Match).
CREATE TABLE articles (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug         TEXT NOT NULL,
    title        TEXT NOT NULL,
    summary      TEXT NOT NULL DEFAULT '',
    body         TEXT NOT NULL,
    tags         TEXT[] NOT NULL DEFAULT '{}',
    status       TEXT NOT NULL DEFAULT 'draft',
    scheduled_at TIMESTAMPTZ,
    published_at TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    version      BIGINT NOT NULL DEFAULT 1,
    search       TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A') ||
        setweight(to_tsvector('english', summary), 'B') ||
        setweight(to_tsvector('english', body), 'C')
    ) STORED,
    CONSTRAINT articles_slug_key UNIQUE (slug),
    CONSTRAINT articles_slug_format CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$' AND length(slug) <= 100),
    CONSTRAINT articles_status_check CHECK (status IN ('draft', 'scheduled', 'published')),
    CONSTRAINT articles_published_at_check CHECK ((status = 'published') = (published_at IS NOT NULL)),
    CONSTRAINT articles_scheduled_at_check CHECK ((status = 'scheduled') = (scheduled_at IS NOT NULL))
);

-- Hot paths only ever read published articles, newest first: partial indexes keep them small.
CREATE INDEX articles_published_idx ON articles (published_at DESC, id DESC) WHERE status = 'published';
CREATE INDEX articles_tags_idx ON articles USING GIN (tags) WHERE status = 'published';
CREATE INDEX articles_search_idx ON articles USING GIN (search) WHERE status = 'published';
