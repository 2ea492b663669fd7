//! The schema of the users service, as migration steps for [`protomesh_data::migrate`]. A step
//! that was released is never edited: add a new one.

/// Accounts, refresh tokens and the RSA keys access tokens are signed with.
///
/// - `users.email` is stored trimmed and lower-cased, so the unique constraint is
///   case-insensitive; `password_hash` is an argon2id PHC string.
/// - `refresh_tokens` keeps only the SHA-256 of each token. A token is live while `used_at` and
///   `revoked_at` are null and `expires_at` is ahead; the partial index finds a user's live
///   tokens for revocation.
/// - `signing_keys` holds PKCS#8 PEM private keys; `kid` is the RFC 7638 thumbprint of the public
///   key. The newest active key signs; every active key is in the JWKS.
pub const USERS_TOKENS_AND_KEYS: &str = "
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL
        CONSTRAINT users_email_key UNIQUE
        CONSTRAINT users_email_length CHECK (char_length(email) BETWEEN 3 AND 254),
    display_name text NOT NULL
        CONSTRAINT users_display_name_length CHECK (char_length(display_name) BETWEEN 1 AND 100),
    password_hash text NOT NULL,
    roles text[] NOT NULL DEFAULT '{user}',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY
        CONSTRAINT refresh_tokens_hash_length CHECK (octet_length(token_hash) = 32),
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    revoked_at timestamptz
);

CREATE INDEX refresh_tokens_live_by_user ON refresh_tokens (user_id)
    WHERE used_at IS NULL AND revoked_at IS NULL;
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expires_at);

CREATE TABLE signing_keys (
    kid text PRIMARY KEY,
    private_key_pem text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    active boolean NOT NULL DEFAULT true
);
";

/// Device tokens: what a successful login hands out so that the device's later logins are
/// counted apart from strangers' failures ([`crate::limits`]).
///
/// - Only the SHA-256 of each token is stored, with its user, creation and expiry times.
/// - A token is valid while `expires_at` is ahead; expired ones are deleted at the user's next
///   successful login, and a token presented at a successful login is replaced by a new one.
pub const DEVICE_TOKENS: &str = "
CREATE TABLE device_tokens (
    token_hash bytea PRIMARY KEY
        CONSTRAINT device_tokens_hash_length CHECK (octet_length(token_hash) = 32),
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX device_tokens_by_user ON device_tokens (user_id);
";

/// Every step, in order: pass to `migrate(&pool, "users", MIGRATIONS)`.
pub const MIGRATIONS: &[(i64, &str)] = &[(1, USERS_TOKENS_AND_KEYS), (2, DEVICE_TOKENS)];
