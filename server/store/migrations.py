"""Forward-only schema migrations. Append a new entry; never edit one that has shipped."""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

# (version, statements). Executions and events keep no foreign key to projects: the audit trail
# outlives a deleted project.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE users (
                user_id     TEXT PRIMARY KEY,
                name        TEXT NOT NULL UNIQUE,
                created_at  TEXT NOT NULL
            )""",
            """CREATE TABLE agents (
                agent_id     TEXT PRIMARY KEY,
                user_id      TEXT REFERENCES users(user_id) ON DELETE SET NULL,
                token_hash   TEXT UNIQUE,
                created_at   TEXT NOT NULL,
                last_seen_at TEXT
            )""",
            """CREATE TABLE projects (
                project_id       TEXT PRIMARY KEY,
                name             TEXT NOT NULL,
                description      TEXT NOT NULL DEFAULT '',
                project_type     TEXT NOT NULL,
                driver           TEXT NOT NULL,
                vm_id            TEXT,
                vm_status        TEXT NOT NULL,
                vm_status_reason TEXT,
                vm_url           TEXT,
                workspace_path   TEXT,
                owner_id         TEXT NOT NULL REFERENCES agents(agent_id),
                settings         TEXT NOT NULL,
                created_at       TEXT NOT NULL,
                updated_at       TEXT NOT NULL,
                last_activity_at TEXT
            )""",
            """CREATE TABLE project_agents (
                project_id   TEXT NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
                agent_id     TEXT NOT NULL REFERENCES agents(agent_id) ON DELETE CASCADE,
                access_level TEXT NOT NULL,
                added_at     TEXT NOT NULL,
                added_by     TEXT,
                PRIMARY KEY (project_id, agent_id)
            )""",
            "CREATE INDEX project_agents_by_agent ON project_agents(agent_id)",
            """CREATE TABLE project_executions (
                execution_id TEXT PRIMARY KEY,
                project_id   TEXT NOT NULL,
                agent_id     TEXT NOT NULL,
                command      TEXT NOT NULL,
                cwd          TEXT,
                output       TEXT,
                error_output TEXT,
                exit_code    INTEGER,
                status       TEXT NOT NULL,
                reason       TEXT,
                timed_out    INTEGER NOT NULL DEFAULT 0,
                truncated    INTEGER NOT NULL DEFAULT 0,
                queued_at    TEXT,
                started_at   TEXT,
                completed_at TEXT,
                duration_ms  INTEGER,
                queued_ms    INTEGER,
                server_id    TEXT
            )""",
            """CREATE INDEX project_executions_by_project
                ON project_executions(project_id, started_at)""",
            "CREATE INDEX project_executions_by_status ON project_executions(status)",
            """CREATE TABLE events (
                event_id   INTEGER PRIMARY KEY AUTOINCREMENT,
                project_id TEXT,
                agent_id   TEXT,
                kind       TEXT NOT NULL,
                data       TEXT NOT NULL,
                created_at TEXT NOT NULL
            )""",
            "CREATE INDEX events_by_project ON events(project_id, event_id)",
        ],
    ),
    (
        2,
        [
            """CREATE TABLE path_locks (
                project_id  TEXT NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
                path        TEXT NOT NULL,
                agent_id    TEXT NOT NULL,
                acquired_at TEXT NOT NULL,
                expires_at  TEXT NOT NULL,
                PRIMARY KEY (project_id, path)
            )""",
        ],
    ),
    (
        3,
        [
            # A stable, increasing position for every execution: what history pages by. (The
            # implicit rowid is not stable: VACUUM may renumber it.)
            "ALTER TABLE project_executions ADD COLUMN seq INTEGER",
            "UPDATE project_executions SET seq = rowid",
            "CREATE UNIQUE INDEX project_executions_by_seq ON project_executions(seq)",
            """CREATE INDEX project_executions_by_project_seq
                ON project_executions(project_id, seq)""",
        ],
    ),
    (
        4,
        [
            # Interactive terminals are executions too; this tells them from commands.
            "ALTER TABLE project_executions ADD COLUMN kind TEXT NOT NULL DEFAULT 'command'",
        ],
    ),
]
