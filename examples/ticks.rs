//! A sender watches her ticks turn from sent to delivered to read while two
//! recipients, on another task, deliver and read — in a direct chat and in a
//! group ("2 of 3 read").
//!
//! Run the README's server (`cargo run --release --bin receiptd -- --dev-mode`),
//! then: `cargo run -p receipts-examples --bin ticks [-- http://127.0.0.1:50051]`.

use futures::StreamExt;
use receipts_sdk::{Client, Event, MessageReceipts, NewMessage, Tick};
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
    let mut events = alice_client.subscribe(None);
    while !matches!(events.next().await, Some(Ok(Event::Live { .. }))) {}

    let (hello, lunch) = (Uuid::now_v7(), Uuid::now_v7());
    let message = |id, conversation_id| NewMessage {
        message_id: id,
        conversation_id,
        seq: 1,
        sender_id: alice,
        sent_at: None,
    };
    backend
        .register_messages(&[message(hello, direct), message(lunch, group)])
        .await?;
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

    let (mut direct_tick, mut group_reads) = (Tick::Sent, 0);
    let done = tokio::time::timeout(Duration::from_secs(15), async {
        while direct_tick != Tick::Read || group_reads < 2 {
            let Some(event) = events.next().await else {
                break;
            };
            if let Event::Receipts {
                conversation_id,
                group: is_group,
                messages,
                ..
            } = event?
            {
                for m in messages {
                    let label = if is_group {
                        "alice → group: \"lunch at 1?\""
                    } else {
                        "alice → bob:   \"hello\"      "
                    };
                    println!("{label}  {}", ticks(&m));
                    if conversation_id == direct {
                        direct_tick = m.tick;
                    } else {
                        group_reads = m.read_count;
                    }
                }
            }
        }
        anyhow::Ok(())
    })
    .await;
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
