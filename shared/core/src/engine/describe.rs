//! DescribeStoreImageTasks (and amistore's DescribeRestoreImageTasks): the last
//! 31 days of an account's tasks, newest first, filtered and paged as EC2 does.
//!
//! - With image ids (at most 20), filters are ignored and only the latest task
//!   of each image is returned; MaxResults cannot be combined with them.
//! - Filters `task-state` and `bucket`: values of one filter are ORed, filters
//!   are ANDed, names and values are case-sensitive.
//! - A page holds MaxResults (1..=200) tasks, 200 by default. The NextToken is
//!   opaque and tamper-evident: it is MACed with the service's key over the
//!   account, the query and the position, so a forged token, or one from another
//!   account or another query, is refused.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::ids::{AccountId, ImageId, TaskId};
use crate::task::{Task, TaskKind, TaskState};
use crate::{Detail, Error, Result};

/// Most image ids one request may name.
pub const MAX_IMAGE_IDS: usize = 20;
/// Largest (and default) page.
pub const MAX_RESULTS: u32 = 200;

/// A describe request, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescribeQuery {
    /// `ImageId.N`.
    pub image_ids: Vec<ImageId>,
    /// `Filter.N`: name and values.
    pub filters: Vec<(String, Vec<String>)>,
    /// `MaxResults`.
    pub max_results: Option<u32>,
    /// `NextToken`.
    pub next_token: Option<String>,
}

/// One page of tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribePage {
    /// The tasks, newest first.
    pub tasks: Vec<Task>,
    /// Token for the next page; `None` on the last.
    pub next_token: Option<String>,
}

/// What a token remembers: the query's fingerprint and the last task shown.
#[derive(Serialize, Deserialize)]
struct Position {
    q: String,
    t: i64,
    id: TaskId,
}

#[derive(Debug, Default)]
struct Filters {
    states: Option<Vec<TaskState>>,
    buckets: Option<Vec<String>>,
}

impl Filters {
    fn parse(filters: &[(String, Vec<String>)]) -> Result<Self> {
        let mut parsed = Filters::default();
        for (name, values) in filters {
            if values.is_empty() {
                return Err(Error::InvalidInput(
                    format!("filter {name:?} has no values").into(),
                ));
            }
            match name.as_str() {
                "task-state" => {
                    let states = values
                        .iter()
                        .map(|v| {
                            TaskState::parse(v).ok_or_else(|| {
                                Error::InvalidInput(format!(
                                    "{v:?} is not a task state (InProgress, Completed or Failed)"
                                ).into())
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    parsed.states.get_or_insert_with(Vec::new).extend(states);
                }
                "bucket" => parsed
                    .buckets
                    .get_or_insert_with(Vec::new)
                    .extend(values.iter().cloned()),
                other => {
                    return Err(Error::InvalidInput(
                        format!("unknown filter {other:?}; the filters are task-state and bucket")
                            .into(),
                    ));
                }
            }
        }
        Ok(parsed)
    }

    fn admit(&self, task: &Task) -> bool {
        self.states.as_ref().is_none_or(|s| s.contains(&task.state))
            && self
                .buckets
                .as_ref()
                .is_none_or(|b| b.iter().any(|b| b == task.bucket.as_str()))
    }
}

/// Fingerprint of what a token may continue: the kind and the filters (not the
/// page size, which a client may change between pages).
fn fingerprint(kind: TaskKind, filters: &[(String, Vec<String>)]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(kind.as_str().as_bytes());
    for (name, values) in filters {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        for v in values {
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
    }
    h.finalize().to_hex()[..32].to_owned()
}

fn mac(key: &[u8; 32], account: &AccountId, payload: &str) -> String {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(account.as_str().as_bytes());
    h.update(b"\0");
    h.update(payload.as_bytes());
    h.finalize().to_hex()[..32].to_owned()
}

fn seal(key: &[u8; 32], account: &AccountId, position: &Position) -> Result<String> {
    let json = serde_json::to_string(position)
        .map_err(|e| Error::InvalidInput(Detail::because("token does not serialise", e)))?;
    let payload = URL_SAFE_NO_PAD.encode(json);
    Ok(format!("{payload}.{}", mac(key, account, &payload)))
}

fn open(key: &[u8; 32], account: &AccountId, token: &str, query: &str) -> Result<Position> {
    let bad = || Error::InvalidToken(format!("the pagination token {token:?} is not valid").into());
    let (payload, tag) = token.split_once('.').ok_or_else(bad)?;
    // Compared through their hashes, so timing tells nothing about the right tag.
    let expected = mac(key, account, payload);
    if blake3::hash(expected.as_bytes()) != blake3::hash(tag.as_bytes()) {
        return Err(bad());
    }
    let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| bad())?;
    let position: Position = serde_json::from_slice(&json).map_err(|_| bad())?;
    if position.q != query {
        return Err(Error::InvalidToken(
            "the pagination token belongs to a different query".into(),
        ));
    }
    Ok(position)
}

/// Answers a describe request over `tasks`: the account's tasks of one kind in
/// the retention window, newest first (as [`crate::ports::TaskStore::list`]
/// returns them).
pub fn describe(
    key: &[u8; 32],
    account: &AccountId,
    kind: TaskKind,
    tasks: Vec<Task>,
    query: &DescribeQuery,
) -> Result<DescribePage> {
    if !query.image_ids.is_empty() {
        if query.image_ids.len() > MAX_IMAGE_IDS {
            return Err(Error::InvalidInput(
                format!(
                    "{} image ids given; at most {MAX_IMAGE_IDS} are allowed",
                    query.image_ids.len()
                )
                .into(),
            ));
        }
        if query.max_results.is_some() {
            return Err(Error::InvalidCombination(
                "MaxResults cannot be used together with ImageIds".into(),
            ));
        }
        // Filters are ignored with image ids, as EC2 does; only each image's
        // latest task is shown.
        let mut latest: Vec<Task> = Vec::new();
        for task in tasks {
            let Some(image) = task.image_id.as_ref() else {
                continue;
            };
            if query.image_ids.contains(image)
                && !latest.iter().any(|t| t.image_id.as_ref() == Some(image))
            {
                latest.push(task);
            }
        }
        return Ok(DescribePage {
            tasks: latest,
            next_token: None,
        });
    }
    let limit = match query.max_results {
        Some(n) if !(1..=MAX_RESULTS).contains(&n) => {
            return Err(Error::InvalidInput(
                format!("MaxResults must be between 1 and {MAX_RESULTS}, got {n}").into(),
            ));
        }
        Some(n) => n as usize,
        None => MAX_RESULTS as usize,
    };
    let filters = Filters::parse(&query.filters)?;
    let fp = fingerprint(kind, &query.filters);
    let after = query
        .next_token
        .as_deref()
        .map(|t| open(key, account, t, &fp))
        .transpose()?;
    let mut matching = tasks.into_iter().filter(|t| filters.admit(t)).filter(|t| {
        after
            .as_ref()
            .is_none_or(|p| (t.started_at_ms, &t.id) < (p.t, &p.id))
    });
    let page: Vec<Task> = matching.by_ref().take(limit).collect();
    let next_token = match (matching.next(), page.last()) {
        (Some(_), Some(last)) => Some(seal(
            key,
            account,
            &Position {
                q: fp,
                t: last.started_at_ms,
                id: last.id.clone(),
            },
        )?),
        _ => None,
    };
    Ok(DescribePage {
        tasks: page,
        next_token,
    })
}

/// What a token of [`page`] remembers: the query's fingerprint and the key of
/// the last item shown.
#[derive(Serialize, Deserialize)]
struct After {
    q: String,
    k: String,
}

/// One page of `items` (sorted by `key`, ascending), after the item a
/// `next_token` names, at most `limit` long; and the token for the next page.
/// Tokens are sealed like the tasks' (MACed over `account` and `query`, the
/// fingerprint of everything but the page size), so a forged token, or one
/// from another account or query, is refused.
pub fn page<T>(
    key: &[u8; 32],
    account: &AccountId,
    query: &[&str],
    items: Vec<T>,
    item_key: impl Fn(&T) -> String,
    limit: usize,
    next_token: Option<&str>,
) -> Result<(Vec<T>, Option<String>)> {
    let mut h = blake3::Hasher::new();
    for part in query {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let fp = h.finalize().to_hex()[..32].to_owned();
    let after: Option<After> = match next_token {
        Some(token) => {
            let bad = || {
                Error::InvalidToken(format!("the pagination token {token:?} is not valid").into())
            };
            let (payload, tag) = token.split_once('.').ok_or_else(bad)?;
            let expected = mac(key, account, payload);
            if blake3::hash(expected.as_bytes()) != blake3::hash(tag.as_bytes()) {
                return Err(bad());
            }
            let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| bad())?;
            let after: After = serde_json::from_slice(&json).map_err(|_| bad())?;
            if after.q != fp {
                return Err(Error::InvalidToken(
                    "the pagination token belongs to a different query".into(),
                ));
            }
            Some(after)
        }
        None => None,
    };
    let mut rest = items
        .into_iter()
        .filter(|i| after.as_ref().is_none_or(|a| item_key(i) > a.k));
    let shown: Vec<T> = rest.by_ref().take(limit.max(1)).collect();
    let next = match (rest.next(), shown.last()) {
        (Some(_), Some(last)) => {
            let json = serde_json::to_string(&After {
                q: fp,
                k: item_key(last),
            })
            .map_err(|e| Error::InvalidInput(Detail::because("token does not serialise", e)))?;
            let payload = URL_SAFE_NO_PAD.encode(json);
            Some(format!("{payload}.{}", mac(key, account, &payload)))
        }
        _ => None,
    };
    Ok((shown, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_of_any_items_chain_and_their_tokens_are_bound() {
        let key = [3u8; 32];
        let me = AccountId::local_default();
        let other: AccountId = "111122223333".parse().unwrap();
        let items: Vec<String> = (0..7).map(|i| format!("item-{i}")).collect();
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let (shown, next) = page(
                &key,
                &me,
                &["images", "q"],
                items.clone(),
                |i| i.clone(),
                3,
                token.as_deref(),
            )
            .unwrap();
            seen.extend(shown);
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, items);
        let (_, t) = page(
            &key,
            &me,
            &["images", "q"],
            items.clone(),
            |i| i.clone(),
            3,
            None,
        )
        .unwrap();
        let t = t.unwrap();
        for (account, query, token) in [
            (&other, "q", t.as_str()),
            (&me, "another query", t.as_str()),
            (&me, "q", "forged.token"),
        ] {
            let refused = page(
                &key,
                account,
                &["images", query],
                items.clone(),
                |i| i.clone(),
                3,
                Some(token),
            );
            assert!(
                matches!(refused, Err(Error::InvalidToken(_))),
                "{refused:?}"
            );
        }
    }

    fn task(image: &ImageId, bucket: &str, state: TaskState, t: i64) -> Task {
        let mut task = Task::start(
            TaskKind::Store,
            AccountId::local_default(),
            Some(image.clone()),
            bucket.parse().unwrap(),
            "k.bin".parse().unwrap(),
            1,
            t,
        );
        task.state = state;
        task
    }

    /// Tasks newest first, as the store lists them.
    fn history() -> (Vec<ImageId>, Vec<Task>) {
        let images: Vec<ImageId> = (0..3).map(|_| ImageId::fresh()).collect();
        let mut tasks = vec![
            task(&images[0], "bkt-a", TaskState::Failed, 1),
            task(&images[0], "bkt-b", TaskState::Completed, 2),
            task(&images[1], "bkt-a", TaskState::InProgress, 3),
            task(&images[2], "bkt-a", TaskState::Completed, 4),
            task(&images[1], "bkt-b", TaskState::Completed, 5),
        ];
        tasks.reverse();
        (images, tasks)
    }

    const KEY: [u8; 32] = [7; 32];

    /// The NextToken after a one-task first page.
    fn first_page_token(tasks: &[Task]) -> String {
        let q = DescribeQuery {
            max_results: Some(1),
            ..Default::default()
        };
        describe(
            &KEY,
            &AccountId::local_default(),
            TaskKind::Store,
            tasks.to_vec(),
            &q,
        )
        .unwrap()
        .next_token
        .unwrap()
    }

    #[test]
    fn image_ids_give_the_latest_task_per_image_and_ignore_filters() {
        let (images, tasks) = history();
        let me = AccountId::local_default();
        let q = DescribeQuery {
            image_ids: vec![images[0].clone(), images[1].clone()],
            filters: vec![("task-state".into(), vec!["Failed".into()])],
            ..Default::default()
        };
        let page = describe(&KEY, &me, TaskKind::Store, tasks.clone(), &q).unwrap();
        let got: Vec<i64> = page.tasks.iter().map(|t| t.started_at_ms).collect();
        assert_eq!(got, vec![5, 2]);
        let err = describe(
            &KEY,
            &me,
            TaskKind::Store,
            tasks.clone(),
            &DescribeQuery {
                max_results: Some(1),
                ..q.clone()
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidCombination(_)), "{err}");
        let many = DescribeQuery {
            image_ids: (0..21).map(|_| ImageId::fresh()).collect(),
            ..Default::default()
        };
        assert!(describe(&KEY, &me, TaskKind::Store, tasks, &many).is_err());
    }

    #[test]
    fn filters_and_across_names_and_or_within() {
        let (_, tasks) = history();
        let me = AccountId::local_default();
        let q = |filters: Vec<(&str, Vec<&str>)>| DescribeQuery {
            filters: filters
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.into_iter().map(str::to_owned).collect()))
                .collect(),
            ..Default::default()
        };
        let starts = |q: DescribeQuery| -> Vec<i64> {
            describe(&KEY, &me, TaskKind::Store, tasks.clone(), &q)
                .unwrap()
                .tasks
                .iter()
                .map(|t| t.started_at_ms)
                .collect()
        };
        assert_eq!(starts(q(vec![])), vec![5, 4, 3, 2, 1]);
        assert_eq!(
            starts(q(vec![("task-state", vec!["Completed", "Failed"])])),
            vec![5, 4, 2, 1]
        );
        assert_eq!(
            starts(q(vec![
                ("task-state", vec!["Completed"]),
                ("bucket", vec!["bkt-a"])
            ])),
            vec![4]
        );
        for bad in [
            q(vec![("task-state", vec!["completed"])]),
            q(vec![("owner", vec!["x"])]),
            q(vec![("bucket", vec![])]),
        ] {
            assert!(describe(&KEY, &me, TaskKind::Store, tasks.clone(), &bad).is_err());
        }
    }

    #[test]
    fn any_token_string_is_refused_cleanly() {
        let (_, tasks) = history();
        let me = AccountId::local_default();
        let good = first_page_token(&tasks);
        // Seeded mutations of a real token, and arbitrary bytes: each is refused
        // as an invalid token, never a panic and never another task list.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes = good.clone().into_bytes();
            match i % 3 {
                0 => {
                    let at = (x as usize) % bytes.len();
                    bytes[at] = (x >> 8) as u8 % 128;
                }
                1 => bytes.truncate((x as usize) % bytes.len()),
                _ => bytes = (0..(x % 200)).map(|j| (x >> (j % 56)) as u8).collect(),
            }
            let token = String::from_utf8_lossy(&bytes).into_owned();
            if token == good {
                continue;
            }
            let q = DescribeQuery {
                next_token: Some(token),
                ..Default::default()
            };
            match describe(&KEY, &me, TaskKind::Store, tasks.clone(), &q) {
                Err(Error::InvalidToken(_)) => {}
                other => panic!("mutated token accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn pages_chain_and_tokens_are_bound_to_account_and_query() {
        let (_, tasks) = history();
        let me = AccountId::local_default();
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let q = DescribeQuery {
                max_results: Some(2),
                next_token: token.clone(),
                ..Default::default()
            };
            let page = describe(&KEY, &me, TaskKind::Store, tasks.clone(), &q).unwrap();
            seen.extend(page.tasks.iter().map(|t| t.started_at_ms));
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, vec![5, 4, 3, 2, 1]);

        let token = first_page_token(&tasks);
        let with = |account: &AccountId, kind, token: String, filters| {
            describe(
                &KEY,
                account,
                kind,
                tasks.clone(),
                &DescribeQuery {
                    next_token: Some(token),
                    filters,
                    ..Default::default()
                },
            )
        };
        let other: AccountId = "111122223333".parse().unwrap();
        let mut forged = token.clone();
        forged.replace_range(0..1, if forged.starts_with('A') { "B" } else { "A" });
        for err in [
            with(&other, TaskKind::Store, token.clone(), vec![]).unwrap_err(),
            with(&me, TaskKind::Restore, token.clone(), vec![]).unwrap_err(),
            with(
                &me,
                TaskKind::Store,
                token.clone(),
                vec![("bucket".into(), vec!["bkt-a".into()])],
            )
            .unwrap_err(),
            with(&me, TaskKind::Store, forged, vec![]).unwrap_err(),
            with(&me, TaskKind::Store, "garbage".into(), vec![]).unwrap_err(),
        ] {
            assert!(matches!(err, Error::InvalidToken(_)), "{err}");
        }
        assert!(with(&me, TaskKind::Store, token, vec![]).is_ok());
        for bad in [0, 201] {
            let q = DescribeQuery {
                max_results: Some(bad),
                ..Default::default()
            };
            assert!(describe(&KEY, &me, TaskKind::Store, tasks.clone(), &q).is_err());
        }
    }
}
