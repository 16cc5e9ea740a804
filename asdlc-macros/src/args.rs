//! Parsing `#[event_handler(...)]`'s arguments.
//!
//! Every argument is checked even after one fails, so a single build reports all the
//! mistakes in the attribute, each spanned on its own token.

use std::collections::BTreeSet;

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Meta, Token};

use crate::errors::Errors;
use crate::suggest::suggest;

/// The longest consumer group name, as `asdlc_runtime::keys::validate_group` allows.
const MAX_GROUP_LEN: usize = 63;

/// The arguments the attribute accepts, in the order the docs list them, with an example
/// value for error messages.
const KEYS: &[(&str, &str)] = &[
    ("types", "types = [TaskCreated]"),
    ("group", "group = \"my-handlers\""),
    ("name", "name = \"my-handler\""),
    ("max_deliveries", "max_deliveries = 5"),
    ("timeout", "timeout = \"30s\""),
    ("concurrency", "concurrency = 4"),
    ("ordered_by", "ordered_by = session"),
    ("crate", "crate = \"::asdlc\""),
];

/// `#[event_handler(...)]`'s arguments, checked.
pub(crate) struct HandlerArgs {
    /// The event types, as `EventType` variant names, in the order written.
    pub(crate) types: Vec<Ident>,
    /// The consumer group.
    pub(crate) group: LitStr,
    /// The handler name, if given; the default is the function's path.
    pub(crate) name: Option<LitStr>,
    /// Deliveries before dead-lettering.
    pub(crate) max_deliveries: Option<u32>,
    /// The per-call timeout, in milliseconds.
    pub(crate) timeout_ms: Option<u64>,
    /// How many calls may run at once.
    pub(crate) concurrency: Option<usize>,
    /// What orders the handler's events: `session` or `task`.
    pub(crate) ordered_by: Option<Ident>,
    /// The path generated code starts from, instead of `::asdlc`.
    pub(crate) krate: Option<syn::Path>,
}

/// The event types an attribute names and the path they are under, kept when other
/// arguments are wrong: the expansion names them all the same, so that rustc reports an
/// unknown one together with the attribute's other mistakes.
pub(crate) struct TypeNames {
    /// The variant names, in the order written.
    pub(crate) types: Vec<Ident>,
    /// The path generated code starts from, instead of `::asdlc`.
    pub(crate) krate: Option<syn::Path>,
}

/// Parses and checks the attribute's arguments, reporting every mistake at once.
#[cfg(test)]
pub(crate) fn parse_args(tokens: TokenStream) -> syn::Result<HandlerArgs> {
    parse_args_keeping_types(tokens).0
}

/// As `parse_args`, and on error the types named (when they and `crate` parsed).
pub(crate) fn parse_args_keeping_types(
    tokens: TokenStream,
) -> (syn::Result<HandlerArgs>, Option<TypeNames>) {
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(metas) => metas,
        Err(e) => return (Err(e), None),
    };
    let mut errors = Errors::default();
    let mut seen = BTreeSet::new();

    let mut types = None;
    let mut group = None;
    let mut name = None;
    let mut max_deliveries = None;
    let mut timeout_ms = None;
    let mut concurrency = None;
    let mut ordered_by = None;
    let mut krate = None;
    let mut crate_failed = false;

    for meta in metas {
        let Some(key) = meta.path().get_ident() else {
            errors.push(syn::Error::new_spanned(
                meta.path(),
                format!("expected an argument name, one of {}", allowed_keys()),
            ));
            continue;
        };
        let key_name = key.to_string();
        let Some((key_name, example)) = KEYS.iter().find(|(k, _)| *k == key_name) else {
            errors.push(unknown_key(key));
            continue;
        };
        if !seen.insert(*key_name) {
            errors.push(syn::Error::new_spanned(
                key,
                format!("`{key_name}` set more than once"),
            ));
            continue;
        }
        let value = match &meta {
            Meta::NameValue(nv) => unwrap_group(&nv.value),
            _ => {
                errors.push(syn::Error::new_spanned(
                    &meta,
                    format!("`{key_name}` needs a value, like `{example}`"),
                ));
                continue;
            }
        };
        let parsed = match *key_name {
            "types" => {
                let (named, error) = parse_types(value);
                types = named;
                error.map_or(Ok(()), Err)
            }
            "group" => parse_group(value).map(|v| group = Some(v)),
            "name" => parse_name(value).map(|v| name = Some(v)),
            "max_deliveries" => {
                parse_at_least_one(value, key_name, example).map(|v| max_deliveries = Some(v))
            }
            "timeout" => parse_timeout(value).map(|v| timeout_ms = Some(v)),
            "concurrency" => {
                parse_at_least_one(value, key_name, example).map(|v| concurrency = Some(v))
            }
            "ordered_by" => parse_ordered_by(value).map(|v| ordered_by = Some(v)),
            "crate" => parse_crate(value).map(|v| krate = Some(v)),
            _ => unreachable!("every key in KEYS is handled"),
        };
        if let Err(e) = parsed {
            crate_failed |= *key_name == "crate";
            errors.push(e);
        }
    }

    for (key, what) in [
        ("types", "the event types this handler handles"),
        ("group", "the consumer group this handler belongs to"),
    ] {
        if !seen.contains(key) {
            let example = KEYS.iter().find(|(k, _)| *k == key).map(|(_, e)| e);
            errors.push(syn::Error::new(
                Span::call_site(),
                format!("missing `{key}`: {what}, like `{}`", example.unwrap_or(&"")),
            ));
        }
    }

    if let Err(e) = errors.finish() {
        let names = types
            .filter(|_| !crate_failed)
            .map(|types| TypeNames { types, krate });
        return (Err(e), names);
    }
    match (types, group) {
        (Some(types), Some(group)) => (
            Ok(HandlerArgs {
                types,
                group,
                name,
                max_deliveries,
                timeout_ms,
                concurrency,
                ordered_by,
                krate,
            }),
            None,
        ),
        _ => unreachable!("a missing or invalid `types` or `group` was reported above"),
    }
}

fn allowed_keys() -> String {
    let keys: Vec<String> = KEYS.iter().map(|(k, _)| format!("`{k}`")).collect();
    keys.join(", ")
}

fn unknown_key(key: &Ident) -> syn::Error {
    let key_name = key.to_string();
    let names: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
    let hint = match suggest(&key_name, &names) {
        Some(s) => format!("did you mean `{s}`? Expected"),
        None => "expected".to_owned(),
    };
    syn::Error::new_spanned(
        key,
        format!(
            "unknown argument `{key_name}`; {hint} one of {}",
            allowed_keys()
        ),
    )
}

/// Sees through the invisible group a `macro_rules!` fragment is wrapped in.
fn unwrap_group(mut expr: &Expr) -> &Expr {
    while let Expr::Group(g) = expr {
        expr = &g.expr;
    }
    expr
}

/// The types named, each once (`None` if `value` is no list of them), and the mistakes in
/// the list: the names kept are checked by rustc even when the list has mistakes.
fn parse_types(value: &Expr) -> (Option<Vec<Ident>>, Option<syn::Error>) {
    let Expr::Array(array) = value else {
        let e = syn::Error::new_spanned(
            value,
            "expected a list of event types in brackets, like `types = [TaskCreated]`",
        );
        return (None, Some(e));
    };
    if array.elems.is_empty() {
        let e = syn::Error::new(
            array.bracket_token.span.join(),
            "`types` is empty: list at least one event type, like `types = [TaskCreated]`",
        );
        return (None, Some(e));
    }
    let mut errors = Errors::default();
    let mut types: Vec<Ident> = Vec::new();
    for elem in &array.elems {
        match event_type(unwrap_group(elem)) {
            Ok(ident) if types.contains(&ident) => errors.push(syn::Error::new_spanned(
                &ident,
                format!("event type `{ident}` listed more than once"),
            )),
            Ok(ident) => types.push(ident),
            Err(e) => errors.push(e),
        }
    }
    let types = (!types.is_empty()).then_some(types);
    (types, errors.finish().err())
}

/// One element of `types`: a variant name, optionally written `EventType::Name`. Any name
/// is taken; the expansion's `EventType::<name>` is where an unknown one fails.
fn event_type(elem: &Expr) -> syn::Result<Ident> {
    let path = match elem {
        Expr::Path(p) if p.qself.is_none() => &p.path,
        _ => {
            return Err(syn::Error::new_spanned(
                elem,
                "expected an event type name, like `TaskCreated`",
            ));
        }
    };
    let segments: Vec<_> = path.segments.iter().collect();
    let qualified_ok = match segments.as_slice() {
        [_] => path.leading_colon.is_none(),
        [.., parent, _] => parent.ident == "EventType",
        [] => false,
    };
    let last = segments.last().filter(|s| s.arguments.is_none());
    let ident = match last {
        Some(last) if qualified_ok => &last.ident,
        _ => {
            return Err(syn::Error::new_spanned(
                path,
                "expected an event type name, like `TaskCreated`",
            ));
        }
    };
    // Whether it names a variant is rustc's to say: the expansion writes `EventType::<ident>`
    // with this token's span.
    Ok(ident.clone())
}

fn string_literal(value: &Expr, example: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("expected a string, like `{example}`"),
        )),
    }
}

fn parse_group(value: &Expr) -> syn::Result<LitStr> {
    let lit = string_literal(value, "group = \"my-handlers\"")?;
    match check_group(&lit.value()) {
        Ok(()) => Ok(lit),
        Err(why) => Err(syn::Error::new_spanned(&lit, why)),
    }
}

/// The rule of `asdlc_runtime::keys::validate_group`: 1 to 63 lowercase ASCII letters,
/// digits, `-`, `_` and `.`.
pub(crate) fn check_group(group: &str) -> Result<(), String> {
    const RULE: &str = "a group is 1 to 63 lowercase letters, digits, `-`, `_` or `.`";
    if group.is_empty() {
        return Err(format!("the group is empty; {RULE}"));
    }
    let len = group.chars().count();
    if len > MAX_GROUP_LEN {
        return Err(format!(
            "invalid group `{group}`: it is {len} characters long; {RULE}"
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if let Some(bad) = group.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "invalid group `{group}`: {bad:?} is not allowed; {RULE}"
        ));
    }
    Ok(())
}

fn parse_name(value: &Expr) -> syn::Result<LitStr> {
    let lit = string_literal(value, "name = \"my-handler\"")?;
    if lit.value().trim().is_empty() {
        return Err(syn::Error::new_spanned(&lit, "the handler name is empty"));
    }
    Ok(lit)
}

fn parse_at_least_one<N>(value: &Expr, key: &str, example: &str) -> syn::Result<N>
where
    N: std::str::FromStr + PartialEq + From<u8>,
    N::Err: std::fmt::Display,
{
    let int = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) if !int.base10_digits().starts_with('-') => int,
        _ => {
            return Err(syn::Error::new_spanned(
                value,
                format!("expected a positive integer, like `{example}`"),
            ));
        }
    };
    let n: N = int.base10_parse()?;
    if n == N::from(0) {
        return Err(syn::Error::new_spanned(
            int,
            format!("`{key}` must be at least 1"),
        ));
    }
    Ok(n)
}

fn parse_timeout(value: &Expr) -> syn::Result<u64> {
    let lit = string_literal(value, "timeout = \"30s\"")?;
    parse_duration_ms(&lit.value()).map_err(|why| syn::Error::new_spanned(&lit, why))
}

/// `"500ms"`, `"30s"` or `"2m"`, in milliseconds.
pub(crate) fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        _ => 0,
    };
    if digits.is_empty() || per_unit == 0 {
        return Err(format!(
            "invalid timeout `{s}`: expected a whole number followed by `ms`, `s` or `m`, \
             like \"500ms\", \"30s\" or \"2m\""
        ));
    }
    let ms = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(per_unit))
        .ok_or_else(|| format!("timeout `{s}` is too long"))?;
    if ms == 0 {
        return Err(format!("timeout `{s}` is zero; a timeout must be positive"));
    }
    Ok(ms)
}

/// The keys `ordered_by` takes, and the `OrderBy` variant each names.
pub(crate) const ORDER_KEYS: &[(&str, &str)] = &[("session", "Session"), ("task", "Task")];

/// `session` or `task`, as the variant of `OrderBy` it names.
fn parse_ordered_by(value: &Expr) -> syn::Result<Ident> {
    let allowed = || {
        let names: Vec<String> = ORDER_KEYS.iter().map(|(k, _)| format!("`{k}`")).collect();
        names.join(" or ")
    };
    let ident = match value {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident(),
        _ => None,
    };
    let Some(ident) = ident else {
        return Err(syn::Error::new_spanned(
            value,
            format!(
                "expected what orders the events, {}, like `ordered_by = session`; \
                 for a key of your own, use `HandlerSpec::ordered_by(OrderBy::Key(..))`",
                allowed()
            ),
        ));
    };
    let name = ident.to_string();
    match ORDER_KEYS.iter().find(|(k, _)| *k == name) {
        Some((_, variant)) => Ok(Ident::new(variant, ident.span())),
        None => {
            let keys: Vec<&str> = ORDER_KEYS.iter().map(|(k, _)| *k).collect();
            let hint = match suggest(&name, &keys) {
                Some(s) => format!("did you mean `{s}`? "),
                None => String::new(),
            };
            Err(syn::Error::new_spanned(
                ident,
                format!(
                    "unknown order key `{name}`; {hint}`ordered_by` takes {}; for a key of \
                     your own, use `HandlerSpec::ordered_by(OrderBy::Key(..))`",
                    allowed()
                ),
            ))
        }
    }
}

fn parse_crate(value: &Expr) -> syn::Result<syn::Path> {
    let lit = string_literal(value, "crate = \"::asdlc\"")?;
    lit.parse::<syn::Path>().map_err(|_| {
        syn::Error::new_spanned(
            &lit,
            format!(
                "`{}` is not a path; expected the path of the asdlc crate, like `crate = \"::asdlc\"`",
                lit.value()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn error_of(tokens: TokenStream) -> String {
        match parse_args(tokens) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn minimal_arguments_parse() {
        let args =
            parse_args(quote!(types = [TaskCreated, TaskDispatched], group = "dev")).unwrap();
        let types: Vec<String> = args.types.iter().map(ToString::to_string).collect();
        assert_eq!(types, ["TaskCreated", "TaskDispatched"]);
        assert_eq!(args.group.value(), "dev");
        assert!(args.name.is_none());
        assert!(args.max_deliveries.is_none());
        assert!(args.timeout_ms.is_none());
        assert!(args.concurrency.is_none());
        assert!(args.ordered_by.is_none());
        assert!(args.krate.is_none());
    }

    #[test]
    fn every_option_parses() {
        let args = parse_args(quote!(
            types = [EventType::GateApproved],
            group = "gates.v2",
            name = "approve",
            max_deliveries = 7,
            timeout = "1500ms",
            concurrency = 3,
            ordered_by = task,
            crate = "::asdlc_runtime",
        ))
        .unwrap();
        assert_eq!(args.ordered_by.unwrap().to_string(), "Task");
        assert_eq!(args.types[0].to_string(), "GateApproved");
        assert_eq!(args.name.unwrap().value(), "approve");
        assert_eq!(args.max_deliveries, Some(7));
        assert_eq!(args.timeout_ms, Some(1500));
        assert_eq!(args.concurrency, Some(3));
        let krate = args.krate.unwrap();
        assert_eq!(quote!(#krate).to_string(), ":: asdlc_runtime");
    }

    #[test]
    fn any_event_type_name_is_taken_for_rustc_to_check() {
        let args = parse_args(quote!(types = [TaskCreate], group = "g")).unwrap();
        assert_eq!(args.types[0].to_string(), "TaskCreate");
    }

    #[test]
    fn the_types_named_survive_other_mistakes() {
        let (args, names) = parse_args_keeping_types(quote!(
            types = [TaskCreate, Foo],
            group = "Bad",
            crate = "::asdlc_runtime"
        ));
        assert!(args.is_err());
        let names = names.unwrap();
        let types: Vec<String> = names.types.iter().map(ToString::to_string).collect();
        assert_eq!(types, ["TaskCreate", "Foo"]);
        let krate = names.krate.unwrap();
        assert_eq!(quote!(#krate).to_string(), ":: asdlc_runtime");
        let (_, names) = parse_args_keeping_types(quote!(
            types = [TaskCreate],
            group = "Bad",
            crate = "not a path"
        ));
        assert!(names.is_none(), "no path to check the types under");
    }

    #[test]
    fn empty_and_duplicate_types_are_rejected() {
        assert!(error_of(quote!(types = [], group = "g")).starts_with("`types` is empty"));
        assert_eq!(
            error_of(quote!(
                types = [TaskCreated, TaskFailed, TaskCreated],
                group = "g"
            )),
            "event type `TaskCreated` listed more than once"
        );
        assert!(
            error_of(quote!(types = TaskCreated, group = "g"))
                .starts_with("expected a list of event types in brackets")
        );
        assert!(
            error_of(quote!(types = [Other::TaskCreated], group = "g"))
                .starts_with("expected an event type name")
        );
    }

    #[test]
    fn required_arguments_are_reported_together() {
        let e = error_of(quote!());
        assert!(e.contains("missing `types`"), "{e}");
        assert!(e.contains("missing `group`"), "{e}");
    }

    #[test]
    fn repeated_and_unknown_keys_are_rejected() {
        assert_eq!(
            error_of(quote!(types = [TaskCreated], group = "a", group = "b")),
            "`group` set more than once"
        );
        let e = error_of(quote!(types = [TaskCreated], group = "a", grup = "b"));
        assert!(
            e.starts_with("unknown argument `grup`; did you mean `group`?"),
            "{e}"
        );
        assert!(e.contains(
            "`types`, `group`, `name`, `max_deliveries`, `timeout`, `concurrency`, `ordered_by`, `crate`"
        ));
        assert!(
            error_of(quote!(types = [TaskCreated], group)).starts_with("`group` needs a value")
        );
    }

    #[test]
    fn groups_follow_the_runtime_rule() {
        check_group("development-handlers").unwrap();
        check_group("a.b_c-1").unwrap();
        assert!(check_group("").is_err());
        assert!(
            check_group("Dev")
                .unwrap_err()
                .contains("'D' is not allowed")
        );
        assert!(check_group("a:b").is_err());
        assert!(check_group(&"a".repeat(63)).is_ok());
        assert!(
            check_group(&"a".repeat(64))
                .unwrap_err()
                .contains("64 characters")
        );
        assert!(
            error_of(quote!(types = [TaskCreated], group = "Dev Handlers"))
                .starts_with("invalid group")
        );
        assert!(
            error_of(quote!(types = [TaskCreated], group = 5)).starts_with("expected a string")
        );
    }

    #[test]
    fn durations_take_ms_s_and_m() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        for bad in ["", "30", "s", "1.5s", "30 s", "30sec", "-1s", "1h"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration_ms("0s").unwrap_err().contains("zero"));
        assert!(
            parse_duration_ms("99999999999999999999m")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn counts_must_be_positive() {
        let base = quote!(types = [TaskCreated], group = "g");
        assert_eq!(
            error_of(quote!(#base, max_deliveries = 0)),
            "`max_deliveries` must be at least 1"
        );
        assert_eq!(
            error_of(quote!(#base, concurrency = 0)),
            "`concurrency` must be at least 1"
        );
        let e = error_of(quote!(#base, concurrency = -1));
        assert!(e.starts_with("expected a positive integer"), "{e}");
        assert!(error_of(quote!(#base, max_deliveries = 5000000000)).contains("too large"));
    }

    #[test]
    fn several_mistakes_are_reported_at_once() {
        let e = error_of(quote!(types = [], group = "Bad", timeout = "soon"));
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(lines[0].starts_with("`types` is empty"));
        assert!(lines[1].starts_with("invalid group `Bad`"));
        assert!(lines[2].starts_with("invalid timeout `soon`"));
    }

    #[test]
    fn ordered_by_takes_session_or_task() {
        let base = quote!(types = [TaskCreated], group = "g");
        let args = parse_args(quote!(#base, ordered_by = session)).unwrap();
        assert_eq!(args.ordered_by.unwrap().to_string(), "Session");
        let e = error_of(quote!(#base, ordered_by = sesion));
        assert!(
            e.starts_with("unknown order key `sesion`; did you mean `session`?"),
            "{e}"
        );
        let e = error_of(quote!(#base, ordered_by = "session"));
        assert!(e.starts_with("expected what orders the events"), "{e}");
        assert!(error_of(quote!(#base, ordered_by)).starts_with("`ordered_by` needs a value"));
    }

    #[test]
    fn crate_must_be_a_path() {
        let base = quote!(types = [TaskCreated], group = "g");
        assert!(error_of(quote!(#base, crate = "not a path")).contains("is not a path"));
    }
}
