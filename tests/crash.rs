//! Crash test: publishers with confirms, SIGKILL at a random moment, restart
//! on the same data directory; every confirmed message must be there
//! (duplicates only of unconfirmed ones are allowed). `WARREN_CRASH_ROUNDS`
//! sets the number of kill points (default 5; scripts/crash-soak runs 100).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};

const PUBLISHERS: usize = 4;

fn rounds() -> usize {
    std::env::var("WARREN_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// xorshift64*: reproducible kill points from a printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_sigkill_at_random_moments() {
    let seed = std::env::var("WARREN_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash test seed {seed} (WARREN_CRASH_SEED={seed} reproduces the kill points)");
    let mut rng = Rng(seed);
    let mut w = Warren::start();
    {
        let (_c, ch) = w.channel().await;
        ch.queue_declare(
            "crash".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    for round in 0..rounds() {
        let confirmed: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut tasks = Vec::new();
        for p in 0..PUBLISHERS {
            let url = w.url();
            let confirmed = confirmed.clone();
            tasks.push(tokio::spawn(async move {
                let Ok(c) = lapin::Connection::connect(&url, Default::default()).await else {
                    return;
                };
                let Ok(ch) = c.create_channel().await else {
                    return;
                };
                if ch
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut inflight = std::collections::VecDeque::new();
                for i in 0u64.. {
                    let body = format!("r{round}-p{p}-{i}");
                    let Ok(confirm) = ch
                        .basic_publish(
                            "".into(),
                            "crash".into(),
                            BasicPublishOptions::default(),
                            body.as_bytes(),
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await
                    else {
                        return;
                    };
                    inflight.push_back((body, confirm));
                    while inflight.len() > 50 {
                        let (body, confirm) = inflight.pop_front().unwrap();
                        match confirm.await {
                            Ok(Confirmation::Ack(_)) => {
                                confirmed.lock().unwrap().insert(body);
                            }
                            _ => return,
                        }
                    }
                }
            }));
        }
        let wait = 100 + rng.next() % 900;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        w.kill();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let confirmed = confirmed.lock().unwrap().clone();
        tokio::task::block_in_place(|| w.restart());
        let (_c, ch) = w.channel().await;
        let mut counts: HashMap<String, usize> = HashMap::new();
        while let Some(m) = ch
            .basic_get("crash".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            *counts
                .entry(String::from_utf8(m.delivery.data.clone()).unwrap())
                .or_default() += 1;
        }
        let missing: Vec<&String> = confirmed
            .iter()
            .filter(|b| !counts.contains_key(*b))
            .collect();
        let duplicated_confirmed: Vec<&String> = counts
            .iter()
            .filter(|(b, n)| **n > 1 && confirmed.contains(*b))
            .map(|(b, _)| b)
            .collect();
        println!(
            "round {round}: killed after {wait} ms, {} confirmed, {} recovered",
            confirmed.len(),
            counts.len()
        );
        assert!(
            missing.is_empty(),
            "round {round} (seed {seed}): {} confirmed messages lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert!(
            duplicated_confirmed.is_empty(),
            "round {round}: confirmed messages duplicated: {duplicated_confirmed:?}"
        );
        assert!(
            !confirmed.is_empty() || wait < 200,
            "round {round}: nothing was confirmed in {wait} ms"
        );
    }
}
