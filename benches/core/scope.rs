//! Structured fan-out/fan-in: a parent starts N children and waits for all of them,
//! 1,000 times over, on one worker. `veloq::scope` (children borrow the parent's data,
//! polled by the scope itself) against Tokio's `JoinSet` (children are tasks, so they
//! must own or share what they read) and against veloq's own `spawn_local` tasks.
//!
//! Two shapes: children that finish at their first poll, and children that yield once
//! (so every one is woken and polled a second time).

use std::sync::Arc;
use std::time::Instant;

use crate::common::{human, tokio_current_thread, veloq_runtime};
use crate::harness::{count, ns_per_op, Bench, Scenario, System};

/// Children per scope.
const FAN: usize = 100;

pub fn all(bench: &mut Bench) {
    fan_out(bench, false);
    fan_out(bench, true);
}

fn fan_out(bench: &mut Bench, yielding: bool) {
    let rounds = count(1_000);
    let scenario = Scenario::lower_is_better(
        format!(
            "scope of {FAN} children{} x {}, 1 worker",
            if yielding { " that yield once" } else { "" },
            human(rounds)
        ),
        "ns/child",
    );
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_scope(rounds, yielding)),
            System::new("tokio-joinset", || tokio_joinset(rounds, yielding)),
            System::new("veloq-spawn_local", || veloq_spawn_local(rounds, yielding)),
        ],
    );
}

/// The data every child reads one element of.
fn data() -> Vec<u64> {
    (0..FAN as u64).collect()
}

/// `veloq::scope` in a task on the only worker; children borrow `data`.
fn veloq_scope(rounds: usize, yielding: bool) -> f64 {
    let rt = veloq_runtime(1);
    let root = rt
        .spawn_to(0, async move {
            let data = data();
            let data = &data;
            let start = Instant::now();
            let mut total = 0u64;
            for _ in 0..rounds {
                total += veloq::scope(|s| async move {
                    let handles: Vec<_> = (0..FAN)
                        .map(|i| {
                            s.spawn(async move {
                                if yielding {
                                    veloq::yield_now().await;
                                }
                                Ok::<u64, ()>(data[i])
                            })
                        })
                        .collect();
                    let mut sum = 0;
                    for h in handles {
                        sum += h.await.expect("child value");
                    }
                    Ok(sum)
                })
                .await
                .expect("scope");
            }
            let ns = ns_per_op(start, rounds * FAN);
            assert_eq!(total, rounds as u64 * (FAN as u64 * (FAN as u64 - 1) / 2));
            ns
        })
        .expect("spawn root");
    rt.block_on(root).expect("root task")
}

/// `veloq::spawn_local` children joined through their handles (data shared by `Arc`).
fn veloq_spawn_local(rounds: usize, yielding: bool) -> f64 {
    let rt = veloq_runtime(1);
    let root = rt
        .spawn_local_to(0, move || async move {
            let data = Arc::new(data());
            let start = Instant::now();
            let mut total = 0u64;
            for _ in 0..rounds {
                let handles: Vec<_> = (0..FAN)
                    .map(|i| {
                        let data = data.clone();
                        veloq::spawn_local(async move {
                            if yielding {
                                veloq::yield_now().await;
                            }
                            data[i]
                        })
                        .expect("spawn_local")
                    })
                    .collect();
                for h in handles {
                    total += h.await.expect("child value");
                }
            }
            let ns = ns_per_op(start, rounds * FAN);
            assert_eq!(total, rounds as u64 * (FAN as u64 * (FAN as u64 - 1) / 2));
            ns
        })
        .expect("spawn root");
    rt.block_on(root).expect("root task")
}

/// Tokio `JoinSet` on a current_thread runtime (data shared by `Arc`: tasks are 'static).
fn tokio_joinset(rounds: usize, yielding: bool) -> f64 {
    let rt = tokio_current_thread();
    rt.block_on(async move {
        let data = Arc::new(data());
        let start = Instant::now();
        let mut total = 0u64;
        for _ in 0..rounds {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..FAN {
                let data = data.clone();
                set.spawn(async move {
                    if yielding {
                        tokio::task::yield_now().await;
                    }
                    data[i]
                });
            }
            while let Some(r) = set.join_next().await {
                total += r.expect("child value");
            }
        }
        let ns = ns_per_op(start, rounds * FAN);
        assert_eq!(total, rounds as u64 * (FAN as u64 * (FAN as u64 - 1) / 2));
        ns
    })
}
