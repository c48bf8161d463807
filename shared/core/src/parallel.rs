//! An ordered, bounded parallel map: items are produced on one thread, transformed
//! on `threads` workers, and consumed in their original order on the caller's thread.
//!
//! Archive frames are independent to compress and decompress but must be written
//! (and hashed) in order. At most `2 × threads` items are in flight, so memory stays
//! bounded whatever the input size. The first error, in input order, stops the run.

use std::collections::BTreeMap;
use std::sync::{Mutex, mpsc};
use std::thread;

/// Runs `work` over `inputs` on `threads` workers and hands the results to
/// `consume` in input order. Each worker owns a state made by `init` (a zstd
/// context, say).
pub fn ordered_map<In, Out, State, E>(
    threads: usize,
    inputs: impl Iterator<Item = Result<In, E>> + Send,
    init: impl Fn() -> Result<State, E> + Sync,
    work: impl Fn(&mut State, In) -> Result<Out, E> + Sync,
    mut consume: impl FnMut(Out) -> Result<(), E>,
) -> Result<(), E>
where
    In: Send,
    Out: Send,
    E: Send,
{
    let threads = threads.max(1);
    let window = threads * 4;
    let (job_tx, job_rx) = mpsc::sync_channel::<(usize, In)>(window);
    let job_rx = Mutex::new(job_rx);
    let (result_tx, result_rx) = mpsc::channel::<(usize, Result<Out, E>)>();
    let (permit_tx, permit_rx) = mpsc::sync_channel::<()>(window);
    for _ in 0..window {
        let _ = permit_tx.send(());
    }

    thread::scope(|scope| {
        let producer_results = result_tx.clone();
        scope.spawn(move || {
            for (seq, item) in inputs.enumerate() {
                // A closed permit channel means the consumer stopped: so do we.
                if permit_rx.recv().is_err() {
                    return;
                }
                let sent = match item {
                    Ok(input) => job_tx.send((seq, input)).is_ok(),
                    Err(e) => {
                        let _ = producer_results.send((seq, Err(e)));
                        false
                    }
                };
                if !sent {
                    return;
                }
            }
        });
        for _ in 0..threads {
            let results = result_tx.clone();
            let (job_rx, init, work) = (&job_rx, &init, &work);
            scope.spawn(move || {
                let mut state = match init() {
                    Ok(state) => state,
                    Err(e) => {
                        let _ = results.send((usize::MAX, Err(e)));
                        return;
                    }
                };
                loop {
                    let job = job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((seq, input)) = job else { return };
                    if results.send((seq, work(&mut state, input))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(result_tx);

        // Owns the receiving ends, so returning early disconnects every sender and
        // lets the producer and workers wind down before the scope joins them.
        let mut run = move || {
            let mut pending = BTreeMap::new();
            let mut next = 0usize;
            for (seq, result) in result_rx.iter() {
                if seq == usize::MAX {
                    return result.map(|_| ());
                }
                pending.insert(seq, result);
                while let Some(result) = pending.remove(&next) {
                    consume(result?)?;
                    next += 1;
                    let _ = permit_tx.send(());
                }
            }
            Ok(())
        };
        run()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_under_uneven_work() {
        let mut seen = Vec::new();
        ordered_map(
            4,
            (0..200u64).map(Ok::<_, String>),
            || Ok(()),
            |_, i| {
                std::thread::sleep(std::time::Duration::from_micros((200 - i) % 7 * 50));
                Ok(i * 2)
            },
            |o| {
                seen.push(o);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (0..200).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn first_error_in_order_wins_and_stops_the_run() {
        let mut consumed = 0;
        let err = ordered_map(
            3,
            (0..1_000_000u64).map(|i| {
                if i == 50 {
                    Err(format!("input {i}"))
                } else {
                    Ok(i)
                }
            }),
            || Ok(()),
            |_, i| {
                if i == 70 {
                    Err(format!("work {i}"))
                } else {
                    Ok(i)
                }
            },
            |_| {
                consumed += 1;
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(err, "input 50");
        assert_eq!(consumed, 50);

        let err = ordered_map(
            2,
            (0..10u64).map(Ok),
            || Ok(()),
            |_, i| Ok::<_, u64>(i),
            |i| {
                if i == 3 { Err(i) } else { Ok(()) }
            },
        )
        .unwrap_err();
        assert_eq!(err, 3);
    }

    #[test]
    fn worker_init_failure_is_reported() {
        let err = ordered_map(
            2,
            (0..10u64).map(Ok),
            || Err::<(), _>("no context"),
            |_, i| Ok(i),
            |_| Ok(()),
        )
        .unwrap_err();
        assert_eq!(err, "no context");
    }
}
