//! SqliteStore against the shared store conformance suite.
#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let s = llmux_store_sqlite::SqliteStore::open(dir.path().join("c.db")).unwrap();
    llmux_core::conformance::run(&s, "s").await;
}
