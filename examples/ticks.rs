//! A sender watches her ticks turn from sent to delivered to read while two
//! recipients, on another task, deliver and read — in a direct chat and in a
//! group ("2 of 3 read"). Her side is what a UI does: a `ReceiptState` kept
//! current by her subscription, and a repaint on every change.
//!
//! Run the README's server (`cargo run --release --bin receiptd -- --dev-mode`),
//! then: `cargo run -p receipts-examples --bin ticks [-- http://127.0.0.1:50051]`.

use receipts_sdk::{Client, MessageReceipts, NewMessage, ReceiptState, Tick};
use std::time::Duration;
use uuid::Uuid;

fn ticks(m: &MessageReceipts) -> String {
    let mark = match m.tick {
        Tick::Sent => "✓   (sent)",
        Tick::Delivered => "✓✓  (delivered)",
        Tick::Read => "✓✓  (read, blue)",
        // Tick is #[non_exhaustive]: a newer server may know more states.
        _ => "?   (unknown to this example)",
    };
    format!(
        "{mark}  {} of {} delivered, {} of {} read",
        m.delivered_count, m.recipients_total, m.read_count, m.recipients_total
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let [alice, bob, carol, dave] = [(); 4].map(|_| Uuid::now_v7());
    let backend = Client::builder(&url)
        .dev_service(Uuid::now_v7())
        .connect()
        .await?
        .backend();
    let (direct, group) = (Uuid::now_v7(), Uuid::now_v7());
    backend.create_conversation(direct, &[alice, bob]).await?;
    backend
        .create_conversation(group, &[alice, bob, carol, dave])
        .await?;

    let alice_client = Client::builder(&url).dev_user(alice).connect().await?;
    // Alice's UI state: kept current by her subscription (on its own task),
    // repainted on every change.
    let state = ReceiptState::new();
    let following = tokio::spawn({
        let (state, client) = (state.clone(), alice_client.clone());
        async move { state.follow(&client, None).await }
    });
    // Live once the stream's first event (its live marker) was applied.
    while state.cursor().is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (hello, lunch) = (Uuid::now_v7(), Uuid::now_v7());
    let message = |id, conversation_id| NewMessage {
        message_id: id,
        conversation_id,
        seq: 1,
        sender_id: alice,
        sent_at: None,
        thread_root_message_id: None,
    };
    backend
        .register_messages(&[message(hello, direct), message(lunch, group)])
        .await?;
    state.track(alice_client.get_receipts(direct, &[hello]).await?);
    state.track(alice_client.get_receipts(group, &[lunch]).await?);
    println!("alice → bob:   \"hello\"        ✓   (sent)");
    println!("alice → group: \"lunch at 1?\"  ✓   (sent)");

    // The recipients, on their own task: bob and carol read, dave only receives.
    let recipients = tokio::spawn({
        let url = url.clone();
        async move {
            let pause = || tokio::time::sleep(Duration::from_millis(400));
            let [b, c, d] =
                [bob, carol, dave].map(|u| Client::builder(&url).dev_user(u).connect_lazy());
            let (b, c, d) = (b?, c?, d?);
            pause().await;
            b.mark_delivered(&[hello, lunch]).await?;
            c.mark_delivered(&[lunch]).await?;
            d.mark_delivered(&[lunch]).await?;
            pause().await;
            b.mark_read_up_to(direct, hello).await?;
            b.mark_read_up_to(group, lunch).await?;
            c.mark_read_up_to(group, lunch).await?;
            anyhow::Ok(())
        }
    });

    // Repaint on every change: print what moved.
    let mut changes = state.changes();
    let mut shown = (state.message(hello), state.message(lunch));
    let done = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let (h, l) = (state.message(hello), state.message(lunch));
            if h != shown.0
                && let Some(m) = &h
            {
                println!("alice → bob:   \"hello\"        {}", ticks(m));
            }
            if l != shown.1
                && let Some(m) = &l
            {
                println!("alice → group: \"lunch at 1?\"  {}", ticks(m));
            }
            shown = (h, l);
            let direct_read = shown.0.as_ref().is_some_and(|m| m.tick == Tick::Read);
            let group_reads = shown.1.as_ref().map_or(0, |m| m.read_count);
            if direct_read && group_reads >= 2 {
                break;
            }
            changes.changed().await?;
        }
        anyhow::Ok(())
    })
    .await;
    following.abort();
    recipients.await??;
    done.map_err(|_| anyhow::anyhow!("ticks did not arrive within 15 s"))??;
    let state = &alice_client.get_receipts(group, &[lunch]).await?[0];
    println!(
        "group summary: {} of {} read",
        state.read_count, state.recipients_total
    );
    anyhow::ensure!(
        state.read_count == 2 && state.recipients_total == 3,
        "expected 2 of 3 read"
    );
    Ok(())
}
