//! EC2's XML: success documents in the 2016-11-15 namespace (a `<requestId>`
//! first, then the result's members by their model `locationName`s, lists as
//! wrappers of `<item>`s), and `<Response><Errors>` error documents; and the
//! same answers as JSON, for the rest-json model the AWS CLI uses on the
//! deployed API (`infra/cli`).

use crate::ApiError;

/// The namespace EC2 puts on every success document (with the trailing slash
/// the wire has and the model omits).
pub const NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// Escapes text for an element's content.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry other control characters or U+FFFE/U+FFFF
            // even escaped. Validation keeps them out of names and tags; this
            // keeps any that slip through (an error message quoting input)
            // from making the document unreadable.
            c if (c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
                || matches!(c, '\u{FFFE}' | '\u{FFFF}') =>
            {
                out.push('\u{FFFD}')
            }
            c => out.push(c),
        }
    }
    out
}

/// One member of an answer: a text, a number, a structure or a list of them.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String, String),
    Number(String, u64),
    Element(String, Vec<Node>),
    List(String, Vec<Vec<Node>>),
}

/// An answer's members, in order, rendered as EC2's XML
/// ([`Body::document`]) or as JSON for the rest-json model ([`Body::json`]):
/// the same names (the model's `locationName`s) either way.
#[derive(Debug, Default)]
pub struct Body(Vec<Node>);

impl Body {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }

    /// `<name>text</name>`.
    pub fn text(&mut self, name: &str, text: &str) -> &mut Self {
        self.0.push(Node::Text(name.to_owned(), text.to_owned()));
        self
    }

    /// `<name>n</name>` (a JSON number).
    pub fn number(&mut self, name: &str, n: u64) -> &mut Self {
        self.0.push(Node::Number(name.to_owned(), n));
        self
    }

    /// `<name>text</name>` if there is a text; nothing otherwise (SDKs read an
    /// absent element as null).
    pub fn opt(&mut self, name: &str, text: Option<&str>) -> &mut Self {
        if let Some(t) = text {
            self.text(name, t);
        }
        self
    }

    /// `<name>` + whatever `fill` writes + `</name>`.
    pub fn element(&mut self, name: &str, fill: impl FnOnce(&mut Body)) -> &mut Self {
        let mut inner = Body::new();
        fill(&mut inner);
        self.0.push(Node::Element(name.to_owned(), inner.0));
        self
    }

    /// A list: `<name>` with one `<item>` per entry (`<name/>` when empty).
    pub fn list<T>(
        &mut self,
        name: &str,
        items: &[T],
        mut fill: impl FnMut(&mut Body, &T),
    ) -> &mut Self {
        let entries = items
            .iter()
            .map(|item| {
                let mut inner = Body::new();
                fill(&mut inner, item);
                inner.0
            })
            .collect();
        self.0.push(Node::List(name.to_owned(), entries));
        self
    }

    fn write_xml(nodes: &[Node], out: &mut String) {
        for node in nodes {
            match node {
                Node::Text(name, text) => {
                    out.push_str(&format!("<{name}>{}</{name}>", escape(text)))
                }
                Node::Number(name, n) => out.push_str(&format!("<{name}>{n}</{name}>")),
                Node::Element(name, inner) => {
                    out.push_str(&format!("<{name}>"));
                    Self::write_xml(inner, out);
                    out.push_str(&format!("</{name}>"));
                }
                Node::List(name, entries) if entries.is_empty() => {
                    out.push_str(&format!("<{name}/>"));
                }
                Node::List(name, entries) => {
                    out.push_str(&format!("<{name}>"));
                    for entry in entries {
                        out.push_str("<item>");
                        Self::write_xml(entry, out);
                        out.push_str("</item>");
                    }
                    out.push_str(&format!("</{name}>"));
                }
            }
        }
    }

    fn to_json(nodes: &[Node]) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for node in nodes {
            let (name, value) = match node {
                Node::Text(name, text) => (name, serde_json::Value::from(text.as_str())),
                Node::Number(name, n) => (name, serde_json::Value::from(*n)),
                Node::Element(name, inner) => (name, Self::to_json(inner)),
                Node::List(name, entries) => (
                    name,
                    serde_json::Value::Array(entries.iter().map(|e| Self::to_json(e)).collect()),
                ),
            };
            map.insert(name.clone(), value);
        }
        serde_json::Value::Object(map)
    }

    /// The whole XML document for `action`.
    pub fn document(&self, action: &str, request_id: &str) -> String {
        let mut members = String::new();
        Self::write_xml(&self.0, &mut members);
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{NAMESPACE}\"><requestId>{}</requestId>{members}</{action}Response>",
            escape(request_id),
        )
    }

    /// The whole JSON document (the rest-json model's answer).
    pub fn json(&self, request_id: &str) -> String {
        let mut doc = Self::to_json(&self.0);
        doc["requestId"] = request_id.into();
        doc.to_string()
    }
}

/// The JSON error document for `error` (the rest-json model's: `__type` is
/// the code).
pub fn json_error_document(error: &ApiError, request_id: &str) -> String {
    serde_json::json!({
        "__type": error.code,
        "message": error.message,
        "requestId": request_id,
    })
    .to_string()
}

/// The error document for `error` (no namespace, `RequestID` with a capital ID).
pub fn error_document(error: &ApiError, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        escape(&error.code),
        escape(&error.message),
        escape(request_id)
    )
}

/// The text of the first `<tag>` element in `doc`, a whole XML document or
/// one element of one (an [`items`] entry), read with an XML parser (so
/// entities, character references and CDATA come out as the text they are).
/// `None` when `doc` is not XML, has no such element, or the element is empty.
pub fn text_of(doc: &str, tag: &str) -> Option<String> {
    let parsed = roxmltree::Document::parse(doc).ok()?;
    let element = parsed
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == tag)?;
    let text: String = element
        .children()
        .filter(|c| c.is_text())
        .filter_map(|c| c.text())
        .collect();
    (!text.is_empty()).then_some(text)
}

/// Each `<item>` element directly inside the first `<list>` element of
/// `doc`, as the slice of `doc` it occupies (an element [`text_of`] reads;
/// EC2's answers declare only a default namespace, which a slice does not
/// need). Empty when `doc` is not XML or has no such list.
pub fn items<'a>(doc: &'a str, list: &str) -> Vec<&'a str> {
    let Ok(parsed) = roxmltree::Document::parse(doc) else {
        return vec![];
    };
    let Some(wrapper) = parsed
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == list)
    else {
        return vec![];
    };
    wrapper
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "item")
        .map(|n| &doc[n.range()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_have_ec2_shapes() {
        let mut b = Body::new();
        b.list("storeImageTaskResultSet", &["ami-1"], |b, id| {
            b.text("amiId", id)
                .text("s3objectKey", "a<b>&.bin")
                .opt("storeTaskFailureReason", None);
        })
        .opt("nextToken", None);
        assert_eq!(
            b.document("DescribeStoreImageTasks", "req-1"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeStoreImageTasksResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>req-1</requestId><storeImageTaskResultSet><item><amiId>ami-1</amiId>\
             <s3objectKey>a&lt;b&gt;&amp;.bin</s3objectKey></item></storeImageTaskResultSet></DescribeStoreImageTasksResponse>"
        );
        let empty = Body::new()
            .list("storeImageTaskResultSet", &[] as &[u8], |_, _| {})
            .document("X", "r");
        assert!(empty.contains("<storeImageTaskResultSet/>"));
        let err = error_document(&ApiError::dry_run(), "r-2");
        assert!(err.contains("<Response><Errors><Error><Code>DryRunOperation</Code>"));
        assert!(err.ends_with("<RequestID>r-2</RequestID></Response>"));
        // XML 1.0 cannot carry U+0001: it becomes U+FFFD, and the document parses.
        assert_eq!(escape("a\u{1}b"), "a\u{FFFD}b");
        let doc = b.document("DescribeStoreImageTasks", "req-1");
        let found = items(&doc, "storeImageTaskResultSet");
        assert_eq!(found.len(), 1);
        assert_eq!(
            text_of(found[0], "s3objectKey").as_deref(),
            Some("a<b>&.bin")
        );
        assert!(items(&empty, "storeImageTaskResultSet").is_empty());
    }

    #[test]
    fn answers_are_read_as_xml_not_searched_as_text() {
        // A character reference, CDATA, a default namespace and a nested list
        // with its own items: all read as XML reads them.
        let doc = "<?xml version=\"1.0\"?><r xmlns=\"urn:x\"><set>\
                   <item><name>a&#x3c;b</name><inner><item><k>1</k></item></inner></item>\
                   <item><name><![CDATA[<c>]]></name></item></set><name>top</name></r>";
        let found = items(doc, "set");
        assert_eq!(found.len(), 2, "items inside an item are not the list's");
        assert_eq!(text_of(found[0], "name").as_deref(), Some("a<b"));
        assert_eq!(text_of(found[1], "name").as_deref(), Some("<c>"));
        assert_eq!(text_of(doc, "name").as_deref(), Some("a<b"));
        // A tag named inside text or an attribute is not an element.
        let tricky =
            "<r a=\"&lt;imageId&gt;x&lt;/imageId&gt;\">&lt;imageId&gt;y&lt;/imageId&gt;</r>";
        assert_eq!(text_of(tricky, "imageId"), None);
        assert_eq!(text_of("<r><imageId/></r>", "imageId"), None);
        assert_eq!(text_of("not xml <imageId>z</imageId", "imageId"), None);
        assert!(items("<set><item>", "set").is_empty());
    }
}
