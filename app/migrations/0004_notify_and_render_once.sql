-- Every change that a reader could see is announced on the channel `articles_changed`, with
-- the article's slug as payload, from inside the writing transaction: PostgreSQL delivers it
-- at commit (never for a rollback) to every replica's listener, which drops what it cached.
-- Drafts and scheduled articles are in no public response, so their changes are not announced.
CREATE FUNCTION articles_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status = 'published' THEN
            PERFORM pg_notify('articles_changed', NEW.slug);
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        IF OLD.status = 'published' THEN
            PERFORM pg_notify('articles_changed', OLD.slug);
        END IF;
    ELSIF OLD.status = 'published' OR NEW.status = 'published' THEN
        PERFORM pg_notify('articles_changed', NEW.slug);
        IF NEW.slug <> OLD.slug THEN
            PERFORM pg_notify('articles_changed', OLD.slug);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER articles_notify_change AFTER INSERT OR UPDATE OR DELETE ON articles
    FOR EACH ROW EXECUTE FUNCTION articles_notify_change();

-- Render once: the sanitised HTML of the body, stored when the article is written, so a
-- page miss costs one indexed read and no Markdown. `render_version` names the renderer
-- that produced it; rows of an older one (or written before this column) are rendered again
-- by a background pass at start-up, found through this index.
ALTER TABLE articles ADD COLUMN body_html TEXT NOT NULL DEFAULT '';
ALTER TABLE articles ADD COLUMN render_version INT NOT NULL DEFAULT 0;
CREATE INDEX articles_render_version_idx ON articles (render_version);
