-- A durable job queue. A job is taken when `visible_at` has passed: at first that is its
-- run time; taking it pushes `visible_at` out by the lease, so a job whose replica died
-- becomes visible again when the lease runs out (like a message queue's visibility timeout).
CREATE TABLE jobs (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         TEXT NOT NULL,
    payload      JSONB NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    run_at       TIMESTAMPTZ NOT NULL,
    visible_at   TIMESTAMPTZ NOT NULL,
    attempts     INT NOT NULL DEFAULT 0,
    max_attempts INT NOT NULL DEFAULT 5,
    locked_by    TEXT,
    last_error   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ,
    CONSTRAINT jobs_state_check CHECK (state IN ('pending', 'done', 'failed'))
);

CREATE INDEX jobs_due_idx ON jobs (visible_at) WHERE state = 'pending';
