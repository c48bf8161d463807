//! EC2 Query requests: `Action=…&Version=2016-11-15&…`, form-encoded in a POST
//! body or a GET query string, with lists flattened and numbered from 1
//! (`ImageId.1`, `Filter.1.Value.2`, `TagSpecification.1.Tag.1.Key`).
//!
//! [`Params`] parses a request (bounded in size and count, strict about
//! encoding) and hands parameters out by name; whatever is left unconsumed at
//! the end is an `UnknownParameter`, so a misspelt parameter is never ignored.

use std::collections::BTreeMap;

use crate::ApiError;

/// Largest request body or query string accepted.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Most parameters in one request.
pub const MAX_PARAMS: usize = 2000;
/// Largest list index accepted (`ImageId.N`, `Filter.N`, …).
pub const MAX_INDEX: u32 = 1000;
/// The only API version EC2's store and restore actions have.
pub const VERSION: &str = "2016-11-15";

fn malformed(msg: impl Into<String>) -> ApiError {
    ApiError::new("MalformedQueryString", msg)
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| malformed(format!("bad percent-encoding in {s:?}")))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| malformed(format!("{s:?} does not decode to UTF-8")))
}

/// A request's parameters, handed out by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// Prefix of every name here, for messages (`Filter.1.` in a filter).
    prefix: String,
    values: BTreeMap<String, String>,
}

impl Params {
    /// Parses a form-encoded body or query string.
    pub fn parse(form: &[u8]) -> Result<Self, ApiError> {
        if form.len() > MAX_REQUEST_BYTES {
            return Err(malformed(format!(
                "the request is {} bytes; at most {MAX_REQUEST_BYTES} are accepted",
                form.len()
            )));
        }
        let text = std::str::from_utf8(form).map_err(|_| malformed("the request is not UTF-8"))?;
        let pairs = text
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                Ok((decode(k)?, decode(v)?))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Self::from_pairs(pairs)
    }

    /// The parameters `pairs` name (each name once, at most [`MAX_PARAMS`]).
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut values = BTreeMap::new();
        for (k, v) in pairs {
            if k.is_empty() {
                return Err(malformed("a parameter has no name"));
            }
            if values.len() >= MAX_PARAMS {
                return Err(malformed(format!("more than {MAX_PARAMS} parameters")));
            }
            if values.insert(k.clone(), v).is_some() {
                return Err(malformed(format!("parameter {k} is given twice")));
            }
        }
        Ok(Self {
            prefix: String::new(),
            values,
        })
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Reads a parameter without taking it.
    pub fn peek(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    /// Drops the query-string signature parameters (`X-Amz-…`), which the
    /// signature check has already read.
    pub fn drop_auth(&mut self) {
        self.values.retain(|k, _| !k.starts_with("X-Amz-"));
    }

    /// Takes an optional parameter.
    pub fn opt(&mut self, name: &str) -> Option<String> {
        self.values.remove(name)
    }

    /// Takes a required, non-empty parameter.
    pub fn req(&mut self, name: &str) -> Result<String, ApiError> {
        match self.values.remove(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::missing(&self.full(name))),
        }
    }

    /// Takes an optional boolean (`true` or `false`).
    pub fn opt_bool(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        self.opt(name)
            .map(|v| match v.as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(ApiError::invalid(
                    &self.full(name),
                    format!("{v:?} is not true or false"),
                )),
            })
            .transpose()
    }

    /// Takes an optional integer.
    pub fn opt_u32(&mut self, name: &str) -> Result<Option<u32>, ApiError> {
        self.opt(name)
            .map(|v| {
                v.parse::<u32>().map_err(|_| {
                    ApiError::invalid(&self.full(name), format!("{v:?} is not a whole number"))
                })
            })
            .transpose()
    }

    /// Takes the numbered group `prefix.N…`: for each index, in order, the
    /// parameters under it (`prefix.N` itself is named `""`).
    pub fn groups(&mut self, prefix: &str) -> Result<Vec<Params>, ApiError> {
        let dotted = format!("{prefix}.");
        let names: Vec<String> = self
            .values
            .keys()
            .filter(|k| k.starts_with(&dotted))
            .cloned()
            .collect();
        let mut groups: BTreeMap<u32, Params> = BTreeMap::new();
        for name in names {
            let rest = &name[dotted.len()..];
            let (index, sub) = rest.split_once('.').unwrap_or((rest, ""));
            let n = index
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_INDEX).contains(n) && !index.starts_with('0'))
                .ok_or_else(|| {
                    ApiError::new(
                        "UnknownParameter",
                        format!("The parameter {} is not recognized", self.full(&name)),
                    )
                })?;
            let value = self.values.remove(&name).unwrap_or_default();
            groups
                .entry(n)
                .or_insert_with(|| Params {
                    prefix: format!("{}{dotted}{n}.", self.prefix),
                    values: BTreeMap::new(),
                })
                .values
                .insert(sub.to_owned(), value);
        }
        Ok(groups.into_values().collect())
    }

    /// Takes the flattened list `prefix.1`, `prefix.2`, … of plain values.
    pub fn list(&mut self, prefix: &str) -> Result<Vec<String>, ApiError> {
        self.groups(prefix)?
            .into_iter()
            .map(|mut g| {
                let v = g.opt("").unwrap_or_default();
                g.finish().map(|()| v)
            })
            .collect()
    }

    /// Fails with `UnknownParameter` if any parameter was not taken.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(name) if name.is_empty() => Err(ApiError::new(
                "UnknownParameter",
                format!(
                    "The parameter {} is not recognized",
                    self.prefix.trim_end_matches('.')
                ),
            )),
            Some(name) => Err(ApiError::new(
                "UnknownParameter",
                format!("The parameter {} is not recognized", self.full(name)),
            )),
        }
    }
}

/// Parses `data` and consumes it as the actions do (scalars, lists, nested
/// groups, booleans, numbers). The fuzz target and the seeded test call this: it
/// must return, never panic, on any input.
#[doc(hidden)]
pub fn fuzz_parse_and_consume(data: &[u8]) {
    let Ok(mut p) = Params::parse(data) else {
        return;
    };
    let _ = p.peek("Action");
    let _ = p.req("Action");
    let _ = p.opt_bool("DryRun");
    let _ = p.opt_u32("MaxResults");
    let _ = p.list("ImageId");
    for prefix in ["Filter", "TagSpecification", "S3ObjectTag"] {
        if let Ok(groups) = p.groups(prefix) {
            for mut g in groups {
                let _ = g.req("Name");
                let _ = g.list("Value");
                if let Ok(tags) = g.groups("Tag") {
                    for mut t in tags {
                        let _ = t.req("Key");
                        let _ = t.finish();
                    }
                }
                let _ = g.finish();
            }
        }
    }
    p.drop_auth();
    let _ = p.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn botocore_requests_parse() {
        // As botocore serialises them (the contract's §2.1).
        let mut p = Params::parse(
            b"Action=DescribeStoreImageTasks&Version=2016-11-15&Filter.1.Name=task-state\
              &Filter.1.Value.1=InProgress&Filter.1.Value.2=Failed&Filter.2.Name=bucket\
              &Filter.2.Value.1=b&MaxResults=5&NextToken=tok%2Fx%3D%3D",
        )
        .unwrap();
        assert_eq!(p.req("Action").unwrap(), "DescribeStoreImageTasks");
        assert_eq!(p.req("Version").unwrap(), VERSION);
        let filters: Vec<(String, Vec<String>)> = p
            .groups("Filter")
            .unwrap()
            .into_iter()
            .map(|mut f| {
                let name = f.req("Name").unwrap();
                let values = f.list("Value").unwrap();
                f.finish().unwrap();
                (name, values)
            })
            .collect();
        assert_eq!(
            filters,
            vec![
                (
                    "task-state".into(),
                    vec!["InProgress".into(), "Failed".into()]
                ),
                ("bucket".into(), vec!["b".into()])
            ]
        );
        assert_eq!(p.opt_u32("MaxResults").unwrap(), Some(5));
        assert_eq!(p.opt("NextToken").as_deref(), Some("tok/x=="));
        p.finish().unwrap();

        let mut p = Params::parse(
            b"Action=CreateRestoreImageTask&Bucket=b&ObjectKey=p1%2Fami-1.bin&Name=my+ami\
              &TagSpecification.1.ResourceType=image&TagSpecification.1.Tag.1.Key=a\
              &TagSpecification.1.Tag.1.Value=b&DryRun=true",
        )
        .unwrap();
        assert_eq!(p.req("Name").unwrap(), "my ami");
        assert_eq!(p.opt_bool("DryRun").unwrap(), Some(true));
        let mut specs = p.groups("TagSpecification").unwrap();
        assert_eq!(specs[0].req("ResourceType").unwrap(), "image");
        let mut tags = specs[0].groups("Tag").unwrap();
        assert_eq!(tags[0].req("Key").unwrap(), "a");
        assert_eq!(tags[0].req("Value").unwrap(), "b");
    }

    #[test]
    fn leftovers_and_bad_encodings_are_errors_naming_the_parameter() {
        let mut p = Params::parse(b"Action=X&ImageId.1=ami-1&ImageID.2=ami-2").unwrap();
        p.req("Action").unwrap();
        assert_eq!(p.list("ImageId").unwrap(), vec!["ami-1".to_owned()]);
        let err = p.finish().unwrap_err();
        assert_eq!(err.code, "UnknownParameter");
        assert!(err.message.contains("ImageID.2"), "{}", err.message);

        let mut p = Params::parse(b"Filter.1.Name=x&Filter.1.Vaule.1=y").unwrap();
        let mut f = p.groups("Filter").unwrap().remove(0);
        f.req("Name").unwrap();
        assert_eq!(f.list("Value").unwrap(), Vec::<String>::new());
        assert!(f.finish().unwrap_err().message.contains("Filter.1.Vaule.1"));

        for bad in [
            &b"a=%zz"[..],
            b"a=%e2%28",
            b"a=1&a=2",
            b"=x",
            b"ImageId.0=x",
            b"ImageId.x=1",
            b"ImageId.01=x",
        ] {
            let parsed = Params::parse(bad).and_then(|mut p| p.list("ImageId").map(|_| p));
            assert!(parsed.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut p = Params::parse(b"ImageId=&DryRun=yes&MaxResults=-1").unwrap();
        assert_eq!(p.req("ImageId").unwrap_err().code, "MissingParameter");
        assert_eq!(
            p.opt_bool("DryRun").unwrap_err().code,
            "InvalidParameterValue"
        );
        assert!(p.opt_u32("MaxResults").is_err());
        assert!(Params::parse(&vec![b'a'; MAX_REQUEST_BYTES + 1]).is_err());
    }

    #[test]
    fn no_input_makes_the_parser_panic() {
        // Seeded mutations of a real request and random bytes.
        let base = b"Action=CreateStoreImageTask&Version=2016-11-15&ImageId=ami-0abc&Bucket=b%2Fp1\
                     &S3ObjectTag.1.Key=k&S3ObjectTag.1.Value=v&Filter.1.Value.2=x&DryRun=true";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes = base.to_vec();
            match i % 3 {
                0 => {
                    let at = x as usize % bytes.len();
                    bytes[at] = (x >> 16) as u8;
                }
                1 => bytes.truncate(x as usize % bytes.len()),
                _ => bytes = (0..x % 300).map(|j| (x >> (j % 57)) as u8).collect(),
            }
            fuzz_parse_and_consume(&bytes);
        }
    }
}
