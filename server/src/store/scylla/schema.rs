//! The persistent tier's schema (the tables, created at connect) and the
//! statements every read and write uses, prepared once. What each table
//! holds and why is in the parent module's docs.

use super::*;

/// Every statement, prepared once at connect.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) insert_conversation: PreparedStatement,
    pub(super) insert_user_conversation: PreparedStatement,
    pub(super) insert_message: PreparedStatement,
    pub(super) insert_conversation_message: PreparedStatement,
    pub(super) insert_sender_message: PreparedStatement,
    pub(super) insert_receipt: PreparedStatement,
    pub(super) insert_run: PreparedStatement,
    pub(super) remove_run: PreparedStatement,
    pub(super) select_runs: PreparedStatement,
    pub(super) update_watermark_seq: PreparedStatement,
    pub(super) update_watermark_public_seq: PreparedStatement,
    pub(super) insert_history: PreparedStatement,
    pub(super) insert_sharing: PreparedStatement,
    pub(super) select_conversation: PreparedStatement,
    pub(super) select_conversation_messages: PreparedStatement,
    pub(super) select_watermarks: PreparedStatement,
    pub(super) select_history: PreparedStatement,
    pub(super) select_message: PreparedStatement,
    pub(super) select_deliveries: PreparedStatement,
    pub(super) select_sharing: PreparedStatement,
    pub(super) select_recent_sent: PreparedStatement,
    pub(super) select_user_conversations: PreparedStatement,
    pub(super) insert_thread_message: PreparedStatement,
    pub(super) select_thread_messages: PreparedStatement,
    pub(super) ping: PreparedStatement,
}

/// The schema; `{ks}` is replaced by the keyspace. See the module docs.
pub(super) const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.conversations (
        conversation uuid PRIMARY KEY, members blob, version bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.user_conversations (
        user uuid, conversation uuid, PRIMARY KEY (user, conversation))",
    "CREATE TABLE IF NOT EXISTS {ks}.messages (
        id uuid PRIMARY KEY, conversation uuid, seq bigint, sender uuid, sent_at bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.conversation_messages (
        conversation uuid, seq bigint, id uuid, sender uuid, sent_at bigint,
        PRIMARY KEY (conversation, seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.sender_messages (
        sender uuid, sent_at bigint, id uuid, conversation uuid, seq bigint,
        PRIMARY KEY (sender, sent_at, id))
        WITH CLUSTERING ORDER BY (sent_at DESC, id DESC)",
    "CREATE TABLE IF NOT EXISTS {ks}.receipts (
        message uuid, user uuid, conversation uuid, delivered_at bigint,
        PRIMARY KEY (message, user))",
    "CREATE TABLE IF NOT EXISTS {ks}.delivery_runs (
        conversation uuid, user uuid, first bigint, last bigint, at bigint, removed boolean,
        PRIMARY KEY (conversation, user, first, last, at))",
    "CREATE TABLE IF NOT EXISTS {ks}.watermarks (
        conversation uuid, user uuid, seq bigint, public_seq bigint,
        PRIMARY KEY (conversation, user))",
    "CREATE TABLE IF NOT EXISTS {ks}.watermark_history (
        conversation uuid, user uuid, public boolean, seq bigint, at bigint,
        PRIMARY KEY (conversation, user, public, seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.sharing (
        user uuid PRIMARY KEY, sharing boolean, version bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.thread_messages (
        conversation uuid, seq bigint, root_seq bigint, root uuid,
        PRIMARY KEY (conversation, seq))",
];

impl Statements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Self, ServiceError> {
        let prepare = |cql: &str| {
            let cql = cql.replace("{ks}", ks);
            async move {
                session
                    .prepare(cql)
                    .await
                    .map_err(|e| unavailable("prepare", e))
            }
        };
        Ok(Self {
            insert_conversation: prepare(
                "INSERT INTO {ks}.conversations (conversation, members, version) \
                 VALUES (?, ?, ?) USING TIMESTAMP ? AND TTL ?",
            )
            .await?,
            insert_user_conversation: prepare(
                "INSERT INTO {ks}.user_conversations (user, conversation) \
                 VALUES (?, ?) USING TTL ?",
            )
            .await?,
            insert_message: prepare(
                "INSERT INTO {ks}.messages (id, conversation, seq, sender, sent_at) \
                 VALUES (?, ?, ?, ?, ?) USING TTL ?",
            )
            .await?,
            insert_conversation_message: prepare(
                "INSERT INTO {ks}.conversation_messages (conversation, seq, id, sender, sent_at) \
                 VALUES (?, ?, ?, ?, ?) USING TTL ?",
            )
            .await?,
            insert_sender_message: prepare(
                "INSERT INTO {ks}.sender_messages (sender, sent_at, id, conversation, seq) \
                 VALUES (?, ?, ?, ?, ?) USING TTL ?",
            )
            .await?,
            insert_receipt: prepare(
                "INSERT INTO {ks}.receipts (message, user, conversation, delivered_at) \
                 VALUES (?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?",
            )
            .await?,
            insert_run: prepare(
                "INSERT INTO {ks}.delivery_runs (conversation, user, first, last, at) \
                 VALUES (?, ?, ?, ?, ?) USING TTL ?",
            )
            .await?,
            remove_run: prepare(
                "UPDATE {ks}.delivery_runs USING TTL ? SET removed = true \
                 WHERE conversation = ? AND user = ? AND first = ? AND last = ? AND at = ?",
            )
            .await?,
            select_runs: prepare(
                "SELECT user, first, last, at, removed FROM {ks}.delivery_runs \
                 WHERE conversation = ?",
            )
            .await?,
            // UPDATE, not INSERT: no row marker, so each field's timestamp
            // stands alone and the two fields merge independently.
            update_watermark_seq: prepare(
                "UPDATE {ks}.watermarks USING TIMESTAMP ? AND TTL ? SET seq = ? \
                 WHERE conversation = ? AND user = ?",
            )
            .await?,
            update_watermark_public_seq: prepare(
                "UPDATE {ks}.watermarks USING TIMESTAMP ? AND TTL ? SET public_seq = ? \
                 WHERE conversation = ? AND user = ?",
            )
            .await?,
            insert_history: prepare(
                "INSERT INTO {ks}.watermark_history (conversation, user, public, seq, at) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?",
            )
            .await?,
            insert_sharing: prepare(
                "INSERT INTO {ks}.sharing (user, sharing, version) \
                 VALUES (?, ?, ?) USING TIMESTAMP ? AND TTL ?",
            )
            .await?,
            select_conversation: prepare(
                "SELECT members, version FROM {ks}.conversations WHERE conversation = ?",
            )
            .await?,
            select_conversation_messages: prepare(
                "SELECT id, seq, sender, sent_at FROM {ks}.conversation_messages \
                 WHERE conversation = ?",
            )
            .await?,
            select_watermarks: prepare(
                "SELECT user, seq, public_seq FROM {ks}.watermarks WHERE conversation = ?",
            )
            .await?,
            select_history: prepare(
                "SELECT user, public, seq, at FROM {ks}.watermark_history WHERE conversation = ?",
            )
            .await?,
            select_message: prepare(
                "SELECT conversation, seq, sender, sent_at FROM {ks}.messages WHERE id = ?",
            )
            .await?,
            select_deliveries: prepare(
                "SELECT user, delivered_at FROM {ks}.receipts WHERE message = ?",
            )
            .await?,
            select_sharing: prepare("SELECT sharing, version FROM {ks}.sharing WHERE user = ?")
                .await?,
            select_recent_sent: prepare(
                "SELECT sent_at, id, conversation, seq FROM {ks}.sender_messages \
                 WHERE sender = ? LIMIT ?",
            )
            .await?,
            select_user_conversations: prepare(
                "SELECT conversation FROM {ks}.user_conversations WHERE user = ?",
            )
            .await?,
            insert_thread_message: prepare(
                "INSERT INTO {ks}.thread_messages (conversation, seq, root_seq, root) \
                 VALUES (?, ?, ?, ?) USING TTL ?",
            )
            .await?,
            select_thread_messages: prepare(
                "SELECT seq, root_seq, root FROM {ks}.thread_messages WHERE conversation = ?",
            )
            .await?,
            ping: prepare("SELECT release_version FROM system.local").await?,
        })
    }
}
