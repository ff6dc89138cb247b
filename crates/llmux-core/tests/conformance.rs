//! MemoryStore against the shared store conformance suite.
#[tokio::test]
async fn memory_store_conforms() {
    llmux_core::conformance::run(&llmux_core::MemoryStore::new(), "m").await;
}
