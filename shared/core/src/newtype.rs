//! The one macro behind the crate's validated string newtypes (names, ids, keys).
//! A type declares its rules in `FromStr` and derives serde with
//! `#[serde(try_from = "String", into = "String")]`; this supplies the rest.

/// Implements `TryFrom<String>` (through `FromStr`), `From<T> for String`,
/// `Display` and `as_str` for a newtype over `String`.
macro_rules! string_newtype {
    ($($ty:ident),+ $(,)?) => {$(
        impl TryFrom<String> for $ty {
            type Error = $crate::Error;
            fn try_from(s: String) -> $crate::Result<Self> {
                s.parse()
            }
        }

        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl $ty {
            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    )+};
}

pub(crate) use string_newtype;
