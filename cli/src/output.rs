//! Printing results: JSON as the AWS CLI prints it (indented by 4).

use serde::Serialize;

/// Prints `value` as JSON indented by 4 spaces, like `aws --output json`.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut serializer)?;
    println!("{}", String::from_utf8(out)?);
    Ok(())
}
