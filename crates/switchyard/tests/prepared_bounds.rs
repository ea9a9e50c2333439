//! Named prepared statements in transaction pooling are bounded (issue 16, item 5): a server
//! connection keeps at most `max_prepared_statements` (the least recently used is closed on the
//! server and prepared again when a client needs it), against a real PostgreSQL.

mod common;

use common::*;
use switchyard_config::{Config, PoolMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_connection_keeps_at_most_max_prepared_statements() {
    let h = Harness::start_with(PoolMode::Transaction, |c: &mut Config| {
        c.pool.size = 1;
        c.pool.max_prepared_statements = 2;
    })
    .await;
    let client = h.client().await;
    let mut statements = Vec::new();
    for i in 0..5 {
        let sql = format!("select {i}::int + $1::int");
        let s = within(STEP, "prepare", client.prepare(&sql))
            .await
            .expect("prepare");
        statements.push(s);
    }
    // Every statement, over and over, in an order that keeps evicting: each gives its answer.
    for round in 0..3 {
        for (i, s) in statements.iter().enumerate().rev() {
            let row = within(STEP, "execute", client.query_one(s, &[&100i32]))
                .await
                .unwrap_or_else(|e| panic!("round {round}, statement {i}: {e:?}"));
            assert_eq!(row.get::<_, i32>(0), 100 + i as i32);
        }
    }
    let open = first_column(&client, "select count(*) from pg_prepared_statements").await;
    let open: i64 = open.parse().expect("a count");
    assert!(
        open <= 2,
        "the pool's only server connection holds {open} prepared statements (max 2)"
    );
}
