//! Behaviour beyond the examples: order, bounds, argument filling, pinning.

use capmesh_plan::{
    Format, Kind, MAX_MAP_ITEMS, MAX_PLAN_BYTES, Source, StepKind, Target, parse, parse_value,
    resolve,
};
use serde_json::{Value, json};

use crate::examples::Table;

fn reviews() -> String {
    let path =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../specs/examples/plans/valid/reviews.yaml");
    std::fs::read_to_string(path).expect("example")
}

fn codes(doc: Value) -> Vec<(String, Kind)> {
    parse_value(doc).expect_err("invalid").list().iter().map(|v| (v.path.clone(), v.kind)).collect()
}

#[test]
fn the_order_puts_every_step_after_its_dependencies() {
    let plan = parse(&reviews(), Format::Yaml).expect("valid");
    assert_eq!(plan.order(), ["fetch", "summaries", "tally", "report"]);
    assert_eq!(
        plan.step("report").expect("step").dependencies().into_iter().collect::<Vec<_>>(),
        ["summaries", "tally"]
    );
    assert_eq!(plan.sinks(), ["report"]);
    assert!(matches!(plan.step("fetch").expect("step").kind, StepKind::Map { .. }));
    assert_eq!(plan.output(), Some(&Source::parse("/steps/report").expect("source")));
    assert_eq!(plan.constraints().max_parallel, Some(4));
    assert_eq!(plan.require()[0].claim, "audited");
}

#[test]
fn arguments_are_filled_from_references() {
    let plan = parse(&reviews(), Format::Yaml).expect("valid");
    let call = plan.step("summaries").expect("step").call().expect("a call");
    let args = call
        .arguments(|s| match s.to_string().as_str() {
            "/item/reviews" => Some(json!(["good", "loud"])),
            "/inputs/words" => Some(json!(80)),
            _ => None,
        })
        .expect("filled");
    assert_eq!(args, json!({"texts": ["good", "loud"], "max_words": 80}));
    assert!(call.arguments(|_| None).is_err());
}

#[test]
fn resolving_pins_ids_and_names_the_plan_by_cid() {
    let table = Table::examples();
    let plan = parse(&reviews(), Format::Yaml).expect("valid");
    assert!(matches!(
        plan.step("fetch").expect("step").call().expect("call").target,
        Target::Query(_)
    ));
    let resolved = futures::executor::block_on(resolve(plan, &table)).expect("resolves");
    let fetch = resolved.pinned("fetch").expect("pinned");
    assert_eq!(fetch.contract.name, "reviews.fetch");
    assert!(fetch.query.is_some());
    assert_eq!(resolved.document()["plan"]["fetch"]["call"], json!(fetch.id.to_string()));
    assert_eq!(resolved.pinned("report"), None);
    assert_eq!(resolved.cid(), capmesh_wire::schema::json_cid(resolved.document()).expect("cid"));
    // The pinned document is a plan of its own, with no query left, and the same CID.
    let again = parse_value(resolved.document().clone()).expect("valid");
    let again = futures::executor::block_on(resolve(again, &table)).expect("resolves");
    assert_eq!(again.cid(), resolved.cid());
}

#[test]
fn a_string_output_is_refused_where_an_integer_goes() {
    let summarize = "bafyr4ihd4o4s6ane7vjf5g3vmx4es3xgsaiqv2mwtkbtchytn476supm2a";
    let plan = parse_value(json!({
        "goal": "Wire a summary into a count",
        "inputs": {"notes": {"value": ["a"]}},
        "plan": {
            "summary": {"call": summarize, "bind": {"/texts": "/inputs/notes"}},
            "again": {"call": summarize, "bind": {"/texts": "/inputs/notes", "/max_words": "/steps/summary"}}
        }
    }))
    .expect("parses");
    let err = futures::executor::block_on(resolve(plan, &Table::examples())).expect_err("refused");
    let v = err.violations().expect("violations").list();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(
        (v[0].path.as_str(), v[0].kind),
        ("/plan/again/bind/~1max_words", Kind::Incompatible)
    );
}

#[test]
fn bounds_are_enforced() {
    let items: Vec<u32> = (0..=u32::try_from(MAX_MAP_ITEMS).expect("fits")).collect();
    assert_eq!(
        codes(json!({
            "goal": "Too many",
            "inputs": {"xs": {"value": items}},
            "plan": {"each": {"map": "/inputs/xs", "call": {"name": "x"}, "bind": {"/x": "/item"}}}
        })),
        [("/plan/each/map".to_owned(), Kind::TooManyItems)]
    );
    let big = format!("{{\"goal\": \"{}\"}}", "x".repeat(MAX_PLAN_BYTES));
    let err = parse(&big, Format::Json).expect_err("too large");
    assert_eq!(err.list()[0].kind, Kind::TooLarge);
    let mut deep = json!(1);
    for _ in 0..60 {
        deep = json!([deep]);
    }
    assert_eq!(
        codes(
            json!({"goal": "Deep", "inputs": {"x": {"value": deep}}, "plan": {"a": {"join": ["/inputs/x"]}}})
        ),
        [(String::new(), Kind::TooLarge)]
    );
}

#[test]
fn yaml_is_read_as_yaml_1_2() {
    // `no` is a string in YAML 1.2 (a boolean only in 1.1), so it is a valid goal here.
    let plan =
        parse("goal: no\nplan: {a: {join: [/inputs/x]}}\ninputs: {x: {value: 1}}\n", Format::Yaml)
            .expect("valid");
    assert_eq!(plan.goal(), "no");
}
