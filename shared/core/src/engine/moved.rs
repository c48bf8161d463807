//! Bytes each task of this process has moved so far, and how many it will
//! move: what a describe answer shows beside the percentage, so a client can
//! draw a byte bar with a rate. Only tasks this process runs have entries (an
//! `amistore serve`'s); an entry goes when its task ends, so the map holds at
//! most the tasks in progress.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::Result;
use crate::blocks::BLOCK_SIZE;
use crate::engine::Engine;
use crate::ids::TaskId;
use crate::task::{Task, TaskKind};

/// Most tasks counted at once.
pub const MAX_TASKS: usize = 4096;

/// Per-task byte counts.
#[derive(Debug, Default)]
pub struct TaskBytes {
    tasks: Mutex<HashMap<TaskId, Counts>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    moved: u64,
    total: Option<u64>,
}

impl TaskBytes {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<TaskId, Counts>) -> T) -> T {
        f(&mut self.tasks.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Counts `bytes` more for `task`. The counts are advisory, so the map is
    /// capped: a process that runs units of tasks it never ends (a Lambda
    /// function's) starts afresh past [`MAX_TASKS`] entries.
    pub fn add(&self, task: &TaskId, bytes: u64) {
        self.with(|m| {
            if m.len() >= MAX_TASKS && !m.contains_key(task) {
                m.clear();
            }
            m.entry(task.clone()).or_default().moved += bytes;
        });
    }

    /// Forgets `task` (it ended).
    pub fn forget(&self, task: &TaskId) {
        self.with(|m| m.remove(task));
    }

    /// Bytes `task` has moved in this process, if it has moved any here.
    pub fn moved(&self, task: &TaskId) -> Option<u64> {
        self.with(|m| m.get(task).map(|c| c.moved))
    }
}

impl Engine {
    /// `(moved, total)` bytes of present blocks for a task in progress in
    /// this process; `None` for one this process is not running. The total
    /// is worked out once (the image's allocated blocks for a store, the
    /// archive's present bytes for a restore) and kept with the counts.
    pub fn bytes_progress(&self, task: &Task) -> Result<Option<(u64, u64)>> {
        let Some(moved) = self.moved.moved(&task.id) else {
            return Ok(None);
        };
        let known = self.moved.with(|m| m.get(&task.id).and_then(|c| c.total));
        let total = match known {
            Some(total) => total,
            None => {
                let total = match task.kind {
                    TaskKind::Store => {
                        let image = task.image_id.as_ref().ok_or_else(|| {
                            crate::Error::IncorrectState(
                                format!("task {} has no image", task.id).into(),
                            )
                        })?;
                        let image = self.catalog.describe_image(&task.account, image)?;
                        let mut blocks = 0;
                        for s in &image.snapshots {
                            blocks += self
                                .snapshots
                                .list_blocks(&task.account, &s.snapshot_id)?
                                .present_count();
                        }
                        blocks * BLOCK_SIZE
                    }
                    TaskKind::Restore => self.restore_present_bytes(task)?,
                };
                self.moved.with(|m| {
                    if let Some(c) = m.get_mut(&task.id) {
                        c.total = Some(total);
                    }
                });
                total
            }
        };
        Ok(Some((moved.min(total), total)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_go_when_forgotten() {
        let bytes = TaskBytes::default();
        let (a, b): (TaskId, TaskId) = (TaskId::fresh(), TaskId::fresh());
        assert_eq!(bytes.moved(&a), None);
        bytes.add(&a, 10);
        bytes.add(&a, 5);
        bytes.add(&b, 1);
        assert_eq!((bytes.moved(&a), bytes.moved(&b)), (Some(15), Some(1)));
        bytes.forget(&a);
        assert_eq!(bytes.moved(&a), None);
        // Bounded: past the cap the map starts afresh.
        for _ in 0..MAX_TASKS + 10 {
            bytes.add(&TaskId::fresh(), 1);
        }
        assert!(bytes.with(|m| m.len()) <= MAX_TASKS);
    }
}
