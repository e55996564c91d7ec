//! Headers exchange matching: owns the parsing of a binding's arguments into a
//! [`HeadersBinding`] and the test of a message's headers against it.
//!
//! Semantics follow RabbitMQ's `rabbit_exchange_type_headers` (3.13 / 4.x):
//!
//! * `x-match` picks the mode: `all` (the default when absent), `any`,
//!   `all-with-x` or `any-with-x`. Any other value is refused at bind time
//!   with 406 PRECONDITION_FAILED.
//! * For `all` / `any`, binding arguments whose key starts with `x-` are
//!   ignored; the `*-with-x` modes keep them. `x-match` itself is always
//!   ignored. Message headers are never filtered.
//! * A binding argument of type void matches when the header is present,
//!   whatever its value. Otherwise the header must be present and equal.
//! * `all` over no remaining arguments matches every message; `any` over
//!   none matches nothing. Absent message headers are an empty table.
//!
//! Value equality copies what RabbitMQ does since 3.13: the message's
//! headers are turned into a map of *untyped* Erlang terms and compared with
//! `=:=` to the binding's untyped value. So:
//!
//! * integers compare by value whatever their width or signedness
//!   (`long 1` matches `short 1`; `ubyte 255` does not match `byte -1`), and
//!   timestamps count as integers;
//! * `float` and `double` compare as f64 (an f32 widens exactly, so `1.5f`
//!   matches `1.5d` but `0.1f` does not match `0.1d`);
//! * an integer never equals a float (`=:=` is not `==`);
//! * long strings and byte arrays are both binaries and compare by bytes;
//! * booleans equal booleans only; decimals compare scale and digits as a
//!   pair, so `1.0` (scale 1) is not `1` (scale 0);
//! * nested tables and arrays keep their inner type tags in Erlang, so they
//!   compare strictly, type for type.
//!
//! Two deliberate departures: RabbitMQ 4.x multiplies a header timestamp by
//! 1000 before comparing (a side effect of normalising to AMQP 1.0
//! milliseconds), which makes a timestamp binding argument unmatchable; we
//! compare timestamps as they are on the wire. And RabbitMQ compares nested
//! tables in wire order, while [`FieldTable`] is sorted, so key order inside
//! a nested table does not matter here.

use crate::protocol::fields::{erlang_binary, erlang_term, erlang_type};
use amq_protocol::types::{AMQPValue, DecimalValue, FieldArray, FieldTable};

/// How a binding combines its arguments (the `x-match` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XMatch {
    /// Every argument must match; `x-` arguments are ignored.
    #[default]
    All,
    /// At least one argument must match; `x-` arguments are ignored.
    Any,
    /// Every argument must match, `x-` arguments included.
    AllWithX,
    /// At least one argument must match, `x-` arguments included.
    AnyWithX,
}

impl XMatch {
    fn parse(value: &[u8]) -> Option<Self> {
        match value {
            b"all" => Some(XMatch::All),
            b"any" => Some(XMatch::Any),
            b"all-with-x" => Some(XMatch::AllWithX),
            b"any-with-x" => Some(XMatch::AnyWithX),
            _ => None,
        }
    }

    fn includes_x_arguments(self) -> bool {
        matches!(self, XMatch::AllWithX | XMatch::AnyWithX)
    }

    fn needs_all(self) -> bool {
        matches!(self, XMatch::All | XMatch::AllWithX)
    }
}

/// A headers-exchange binding, parsed once at bind time.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadersBinding {
    mode: XMatch,
    /// The arguments that take part in matching, in key order (they come
    /// from a sorted [`FieldTable`]), with `x-match` and, in the plain modes,
    /// every other `x-` key already dropped.
    args: Vec<(String, Expected)>,
}

/// What one binding argument asks of the header with the same key.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    /// Void binding value: the header just has to be there.
    Present,
    /// The header's untyped value must equal this one.
    Equal(Untyped),
}

/// A value with its AMQP type erased the way RabbitMQ's routing erases it.
#[derive(Debug, Clone, PartialEq)]
enum Untyped {
    Int(i128),
    Float(f64),
    Bytes(Vec<u8>),
    Bool(bool),
    Decimal(DecimalValue),
    /// A header of type void: its Erlang value is `undefined`.
    Undefined,
    // Nested values keep their inner type tags, so whole-value comparison
    // is the right test for them.
    Array(FieldArray),
    Table(FieldTable),
}

/// The untyped view of a header value, borrowed so matching never allocates.
#[derive(PartialEq)]
enum UntypedRef<'a> {
    Int(i128),
    Float(f64),
    Bytes(&'a [u8]),
    Bool(bool),
    Decimal(DecimalValue),
    Undefined,
    Array(&'a FieldArray),
    Table(&'a FieldTable),
}

impl<'a> UntypedRef<'a> {
    fn of(value: &'a AMQPValue) -> Self {
        match value {
            AMQPValue::Boolean(b) => UntypedRef::Bool(*b),
            AMQPValue::ShortShortInt(n) => UntypedRef::Int((*n).into()),
            AMQPValue::ShortShortUInt(n) => UntypedRef::Int((*n).into()),
            AMQPValue::ShortInt(n) => UntypedRef::Int((*n).into()),
            AMQPValue::ShortUInt(n) => UntypedRef::Int((*n).into()),
            AMQPValue::LongInt(n) => UntypedRef::Int((*n).into()),
            AMQPValue::LongUInt(n) => UntypedRef::Int((*n).into()),
            AMQPValue::LongLongInt(n) => UntypedRef::Int((*n).into()),
            AMQPValue::Timestamp(n) => UntypedRef::Int((*n).into()),
            AMQPValue::Float(x) => UntypedRef::Float((*x).into()),
            AMQPValue::Double(x) => UntypedRef::Float(*x),
            AMQPValue::DecimalValue(d) => UntypedRef::Decimal(*d),
            AMQPValue::ShortString(s) => UntypedRef::Bytes(s.as_str().as_bytes()),
            AMQPValue::LongString(s) => UntypedRef::Bytes(s.as_bytes()),
            AMQPValue::ByteArray(b) => UntypedRef::Bytes(b.as_slice()),
            AMQPValue::FieldArray(a) => UntypedRef::Array(a),
            AMQPValue::FieldTable(t) => UntypedRef::Table(t),
            AMQPValue::Void => UntypedRef::Undefined,
        }
    }

    fn to_untyped(&self) -> Untyped {
        match *self {
            UntypedRef::Int(n) => Untyped::Int(n),
            UntypedRef::Float(x) => Untyped::Float(x),
            UntypedRef::Bytes(b) => Untyped::Bytes(b.to_vec()),
            UntypedRef::Bool(b) => Untyped::Bool(b),
            UntypedRef::Decimal(d) => Untyped::Decimal(d),
            UntypedRef::Undefined => Untyped::Undefined,
            UntypedRef::Array(a) => Untyped::Array(a.clone()),
            UntypedRef::Table(t) => Untyped::Table(t.clone()),
        }
    }
}

impl Untyped {
    fn borrow(&self) -> UntypedRef<'_> {
        match self {
            Untyped::Int(n) => UntypedRef::Int(*n),
            Untyped::Float(x) => UntypedRef::Float(*x),
            Untyped::Bytes(b) => UntypedRef::Bytes(b),
            Untyped::Bool(b) => UntypedRef::Bool(*b),
            Untyped::Decimal(d) => UntypedRef::Decimal(*d),
            Untyped::Undefined => UntypedRef::Undefined,
            Untyped::Array(a) => UntypedRef::Array(a),
            Untyped::Table(t) => UntypedRef::Table(t),
        }
    }
}

impl HeadersBinding {
    /// Parses binding arguments; Err carries the reply text for a 406.
    ///
    /// The text is the explanation only, as RabbitMQ words it (e.g.
    /// `Invalid x-match field value <<"foo">>; expected all, any, all-with-x,
    /// or any-with-x`); `AmqpError::channel` adds the `PRECONDITION_FAILED - `
    /// prefix.
    pub fn from_arguments(args: &FieldTable) -> Result<Self, String> {
        let mode = match args.inner().get("x-match") {
            None => XMatch::All,
            // RabbitMQ insists on a longstr. A ShortString cannot come off the
            // wire (amq-protocol reads `s` as a short int), so accepting one
            // only helps in-process callers.
            Some(AMQPValue::LongString(s)) => parse_mode(s.as_bytes())?,
            Some(AMQPValue::ShortString(s)) => parse_mode(s.as_str().as_bytes())?,
            Some(other) => {
                return Err(format!(
                    "Invalid x-match field type {} (value {}); expected longstr",
                    erlang_type(other),
                    erlang_term(other)
                ));
            }
        };
        let keep_x = mode.includes_x_arguments();
        let args = args
            .inner()
            .iter()
            .filter(|(key, _)| {
                let key = key.as_str();
                key != "x-match" && (keep_x || !key.starts_with("x-"))
            })
            .map(|(key, value)| {
                let expected = match value {
                    AMQPValue::Void => Expected::Present,
                    other => Expected::Equal(UntypedRef::of(other).to_untyped()),
                };
                (key.as_str().to_owned(), expected)
            })
            .collect();
        Ok(HeadersBinding { mode, args })
    }

    /// The binding's `x-match` mode.
    pub fn x_match(&self) -> XMatch {
        self.mode
    }

    /// Does a message with these headers match? `None` is an empty table.
    pub fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let arg_matches = |(key, expected): &(String, Expected)| {
            // A lookup per argument beats merging the two sorted lists:
            // bindings usually have a few arguments, messages may carry many
            // headers.
            let Some(value) = headers.and_then(|h| h.inner().get(key.as_str())) else {
                return false;
            };
            match expected {
                Expected::Present => true,
                Expected::Equal(want) => want.borrow() == UntypedRef::of(value),
            }
        };
        if self.mode.needs_all() {
            self.args.iter().all(arg_matches)
        } else {
            self.args.iter().any(arg_matches)
        }
    }
}

fn parse_mode(value: &[u8]) -> Result<XMatch, String> {
    XMatch::parse(value).ok_or_else(|| {
        format!(
            "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
            erlang_binary(value)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(text: &str) -> AMQPValue {
        AMQPValue::LongString(text.into())
    }

    fn int(n: i32) -> AMQPValue {
        AMQPValue::LongInt(n)
    }

    fn x_match(mode: &str) -> (&'static str, AMQPValue) {
        ("x-match", s(mode))
    }

    struct Case {
        name: &'static str,
        binding: Vec<(&'static str, AMQPValue)>,
        /// `None` is a message without a headers table.
        headers: Option<Vec<(&'static str, AMQPValue)>>,
        expected: bool,
    }

    fn case(
        name: &'static str,
        binding: Vec<(&'static str, AMQPValue)>,
        headers: Option<Vec<(&'static str, AMQPValue)>>,
        expected: bool,
    ) -> Case {
        Case {
            name,
            binding,
            headers,
            expected,
        }
    }

    fn decimal(scale: u8, value: u32) -> AMQPValue {
        AMQPValue::DecimalValue(DecimalValue { scale, value })
    }

    // One case per line reads as a table; rustfmt would spread each over six.
    #[rustfmt::skip]
    fn cases() -> Vec<Case> {
        use AMQPValue as V;
        vec![
            // all / any
            case("all with every header equal", vec![("a", int(1)), ("b", s("x"))], Some(vec![("a", int(1)), ("b", s("x"))]), true),
            case("all with one header missing", vec![("a", int(1)), ("b", s("x"))], Some(vec![("a", int(1))]), false),
            case("all with one header different", vec![("a", int(1)), ("b", s("x"))], Some(vec![("a", int(1)), ("b", s("y"))]), false),
            case("explicit all behaves like the default", vec![x_match("all"), ("a", int(1))], Some(vec![("a", int(1))]), true),
            case("any with one header equal", vec![x_match("any"), ("a", int(1)), ("b", s("x"))], Some(vec![("b", s("x"))]), true),
            case("any with no header equal", vec![x_match("any"), ("a", int(1)), ("b", s("x"))], Some(vec![("a", int(2)), ("b", s("y"))]), false),
            case("extra message headers are ignored", vec![("a", int(1))], Some(vec![("a", int(1)), ("z", s("more"))]), true),
            // void binding values
            case("void matches a present header of any type", vec![("a", V::Void)], Some(vec![("a", s("anything"))]), true),
            case("void matches a void header", vec![("a", V::Void)], Some(vec![("a", V::Void)]), true),
            case("void does not match a missing header", vec![("a", V::Void)], Some(vec![("b", int(1))]), false),
            case("any with a void argument and the header present", vec![x_match("any"), ("a", V::Void), ("b", int(9))], Some(vec![("a", int(0))]), true),
            case("a void header does not equal a non-void argument", vec![("a", int(0))], Some(vec![("a", V::Void)]), false),
            // empty bindings and absent headers
            case("all with no arguments matches everything", vec![], Some(vec![("a", int(1))]), true),
            case("all with no arguments matches absent headers", vec![], None, true),
            case("any with no arguments matches nothing", vec![x_match("any")], Some(vec![("a", int(1))]), false),
            case("absent headers fail an all binding with arguments", vec![("a", V::Void)], None, false),
            case("absent headers fail an any binding", vec![x_match("any"), ("a", V::Void)], None, false),
            // x- arguments
            case("all ignores x- arguments", vec![("x-foo", int(1)), ("a", int(1))], Some(vec![("a", int(1))]), true),
            case("all with only x- arguments matches everything", vec![x_match("all"), ("x-foo", int(1))], None, true),
            case("any with only x- arguments matches nothing", vec![x_match("any"), ("x-foo", int(1))], Some(vec![("x-foo", int(1))]), false),
            case("all-with-x requires x- arguments", vec![x_match("all-with-x"), ("x-foo", int(1)), ("a", int(1))], Some(vec![("a", int(1))]), false),
            case("all-with-x matches x- headers", vec![x_match("all-with-x"), ("x-foo", int(1)), ("a", int(1))], Some(vec![("a", int(1)), ("x-foo", int(1))]), true),
            case("any-with-x matches on an x- header alone", vec![x_match("any-with-x"), ("x-foo", int(1)), ("a", int(1))], Some(vec![("x-foo", int(1))]), true),
            case("with-x modes never require x-match itself", vec![x_match("all-with-x")], Some(vec![]), true),
            case("any-with-x with only x-match matches nothing", vec![x_match("any-with-x")], Some(vec![("x-match", s("any-with-x"))]), false),
            case("x-Foo is not an x- key", vec![("X-foo", int(1))], Some(vec![]), false),
            // value types
            case("integers of different widths are equal", vec![("a", V::LongLongInt(1))], Some(vec![("a", V::ShortShortInt(1))]), true),
            case("unsigned and signed integers compare by value", vec![("a", V::ShortShortUInt(200))], Some(vec![("a", V::ShortInt(200))]), true),
            case("a byte of -1 is not an unsigned byte of 255", vec![("a", V::ShortShortUInt(255))], Some(vec![("a", V::ShortShortInt(-1))]), false),
            case("a timestamp equals the same integer", vec![("a", V::Timestamp(5))], Some(vec![("a", V::LongUInt(5))]), true),
            case("an integer never equals a float", vec![("a", int(1))], Some(vec![("a", V::Double(1.0))]), false),
            case("float and double compare as f64", vec![("a", V::Float(1.5))], Some(vec![("a", V::Double(1.5))]), true),
            case("an f32 0.1 is not the f64 0.1", vec![("a", V::Float(0.1))], Some(vec![("a", V::Double(0.1))]), false),
            case("a long string equals the same bytes as a byte array", vec![("a", s("abc"))], Some(vec![("a", V::ByteArray(b"abc".to_vec().into()))]), true),
            case("a string never equals a number", vec![("a", s("1"))], Some(vec![("a", int(1))]), false),
            case("strings are case-sensitive", vec![("a", s("abc"))], Some(vec![("a", s("ABC"))]), false),
            case("a boolean never equals an integer", vec![("a", V::Boolean(true))], Some(vec![("a", int(1))]), false),
            case("booleans equal booleans", vec![("a", V::Boolean(false))], Some(vec![("a", V::Boolean(false))]), true),
            case("decimals compare scale and digits", vec![("a", decimal(1, 10))], Some(vec![("a", decimal(0, 1))]), false),
            case("equal decimals match", vec![("a", decimal(2, 314))], Some(vec![("a", decimal(2, 314))]), true),
            case("equal nested tables match", vec![("a", V::FieldTable(table(&[("k", int(1))])))], Some(vec![("a", V::FieldTable(table(&[("k", int(1))])))]), true),
            case("nested tables compare their types strictly", vec![("a", V::FieldTable(table(&[("k", V::LongLongInt(1))])))], Some(vec![("a", V::FieldTable(table(&[("k", int(1))])))]), false),
            case("equal nested arrays match", vec![("a", V::FieldArray(vec![int(1), s("x")].into()))], Some(vec![("a", V::FieldArray(vec![int(1), s("x")].into()))]), true),
            case("nested arrays compare their order", vec![("a", V::FieldArray(vec![int(1), int(2)].into()))], Some(vec![("a", V::FieldArray(vec![int(2), int(1)].into()))]), false),
        ]
    }

    #[test]
    fn table_cases_match_as_rabbitmq_does() {
        for c in cases() {
            let binding = HeadersBinding::from_arguments(&table(&c.binding))
                .unwrap_or_else(|e| panic!("{}: binding refused: {e}", c.name));
            let headers = c.headers.as_deref().map(table);
            assert_eq!(binding.matches(headers.as_ref()), c.expected, "{}", c.name);
        }
    }

    #[test]
    fn each_x_match_value_selects_its_mode() {
        let mode =
            |v: &str| HeadersBinding::from_arguments(&table(&[x_match(v)])).map(|b| b.x_match());
        assert_eq!(mode("all"), Ok(XMatch::All));
        assert_eq!(mode("any"), Ok(XMatch::Any));
        assert_eq!(mode("all-with-x"), Ok(XMatch::AllWithX));
        assert_eq!(mode("any-with-x"), Ok(XMatch::AnyWithX));
        let absent = HeadersBinding::from_arguments(&FieldTable::default()).map(|b| b.x_match());
        assert_eq!(absent, Ok(XMatch::All));
    }

    #[test]
    fn an_unknown_x_match_value_is_refused_with_rabbitmqs_text() {
        let err = HeadersBinding::from_arguments(&table(&[x_match("foo")]));
        assert_eq!(
            err,
            Err("Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x".to_owned())
        );
        // Case matters, as in RabbitMQ.
        assert!(HeadersBinding::from_arguments(&table(&[x_match("ALL")])).is_err());
    }

    #[test]
    fn a_non_string_x_match_is_refused_with_its_type() {
        let refuse = |v: AMQPValue| HeadersBinding::from_arguments(&table(&[("x-match", v)]));
        assert_eq!(
            refuse(AMQPValue::LongLongInt(1)),
            Err("Invalid x-match field type long (value 1); expected longstr".to_owned())
        );
        assert_eq!(
            refuse(AMQPValue::Boolean(true)),
            Err("Invalid x-match field type bool (value true); expected longstr".to_owned())
        );
        assert_eq!(
            refuse(AMQPValue::Void),
            Err("Invalid x-match field type void (value undefined); expected longstr".to_owned())
        );
        assert_eq!(
            refuse(AMQPValue::ByteArray(b"all".to_vec().into())),
            Err(
                "Invalid x-match field type binary (value <<\"all\">>); expected longstr"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_short_string_x_match_is_read_like_a_long_string() {
        let args = table(&[("x-match", AMQPValue::ShortString("any".into()))]);
        assert_eq!(
            HeadersBinding::from_arguments(&args).map(|b| b.x_match()),
            Ok(XMatch::Any)
        );
    }

    #[test]
    fn error_texts_render_values_like_erlang() {
        assert_eq!(erlang_binary(b"a\"b\\c"), "<<\"a\\\"b\\\\c\">>");
        assert_eq!(erlang_binary("tëxt".as_bytes()), "<<\"tëxt\"/utf8>>");
        assert_eq!(erlang_binary(&[0, 255]), "<<0,255>>");
        assert_eq!(erlang_binary(b""), "<<\"\">>");
        assert_eq!(erlang_term(&decimal(2, 314)), "{2,314}");
        assert_eq!(erlang_term(&AMQPValue::Double(1.0)), "1.0");
        let nested = AMQPValue::FieldTable(table(&[("k", int(1))]));
        assert_eq!(erlang_term(&nested), "[{<<\"k\">>,signedint,1}]");
        let array = AMQPValue::FieldArray(vec![s("x"), AMQPValue::Boolean(false)].into());
        assert_eq!(erlang_term(&array), "[{longstr,<<\"x\">>},{bool,false}]");
    }

    #[test]
    fn parsing_keeps_only_the_arguments_that_take_part() {
        let args = table(&[
            x_match("any"),
            ("x-foo", int(1)),
            ("b", int(2)),
            ("a", AMQPValue::Void),
        ]);
        let binding = HeadersBinding::from_arguments(&args).unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<&str> = binding.args.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        let with_x = table(&[x_match("any-with-x"), ("x-foo", int(1)), ("b", int(2))]);
        let binding = HeadersBinding::from_arguments(&with_x).unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<&str> = binding.args.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "x-foo"]);
    }
}
