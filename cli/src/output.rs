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

/// EC2's XML list elements, and the names the AWS CLI gives them.
const LISTS: [(&str, &str); 5] = [
    ("imagesSet", "Images"),
    ("blockDeviceMapping", "BlockDeviceMappings"),
    ("tagSet", "Tags"),
    ("productCodes", "ProductCodes"),
    ("snapshotSet", "Snapshots"),
];
/// Members whose model name is not their wire name capitalised.
const RENAMES: [(&str, &str); 3] = [
    ("imageState", "State"),
    ("imageOwnerId", "OwnerId"),
    ("isPublic", "Public"),
];
/// Members the model types as booleans and integers.
const BOOLEANS: [&str; 4] = ["isPublic", "enaSupport", "deleteOnTermination", "encrypted"];
const INTEGERS: [&str; 3] = ["volumeSize", "iops", "throughput"];

/// An EC2 XML answer (DescribeImages') as the AWS CLI prints it: the model's
/// member names, lists as arrays, booleans and integers typed. `amistore
/// image list --json` prints this, so its output is `aws ec2 describe-images`'.
pub fn ec2_json(xml: &str) -> anyhow::Result<serde_json::Value> {
    use serde_json::{Map, Value};
    fn name(wire: &str) -> String {
        if let Some((_, n)) = LISTS.iter().chain(RENAMES.iter()).find(|(w, _)| *w == wire) {
            return (*n).to_owned();
        }
        let mut c = wire.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect())
            .unwrap_or_default()
    }
    fn value(node: roxmltree::Node<'_, '_>) -> Value {
        let wire = node.tag_name().name();
        if LISTS.iter().any(|(w, _)| *w == wire) {
            return Value::Array(
                node.children()
                    .filter(|c| c.has_tag_name("item"))
                    .map(object)
                    .collect(),
            );
        }
        if node.children().any(|c| c.is_element()) {
            return object(node);
        }
        let text = node.text().unwrap_or_default();
        if BOOLEANS.contains(&wire) {
            return Value::Bool(text == "true");
        }
        if let Some(n) = INTEGERS
            .contains(&wire)
            .then(|| text.parse::<u64>().ok())
            .flatten()
        {
            return Value::from(n);
        }
        Value::from(text)
    }
    fn object(node: roxmltree::Node<'_, '_>) -> Value {
        let mut map = Map::new();
        for child in node.children().filter(|c| c.is_element()) {
            if child.has_tag_name("requestId") {
                continue;
            }
            map.insert(name(child.tag_name().name()), value(child));
        }
        Value::Object(map)
    }
    let doc = roxmltree::Document::parse(xml)?;
    Ok(object(doc.root_element()))
}
