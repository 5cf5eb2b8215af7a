//! VAL-6 for event bodies: any bytes under any schema header decode to an event or an error,
//! never a panic. The corpus is every fixture body of every schema (`tests/fixtures/`).

use rbee_bus::Envelope;
use rbee_bus::fuzz::{Mutator, cases};

fn corpus() -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut bodies = Vec::new();
    for schema in std::fs::read_dir(root).unwrap().flatten().filter(|e| e.path().is_dir()) {
        for file in std::fs::read_dir(schema.path()).unwrap().flatten() {
            if file.path().extension().is_some_and(|e| e == "bin") {
                bodies.push(std::fs::read(file.path()).unwrap());
            }
        }
    }
    assert!(bodies.len() >= 100, "the corpus holds every fixture");
    bodies
}

#[test]
fn mutated_event_bodies_never_panic_the_decoder() {
    let corpus = corpus();
    let mut mutator = Mutator::new(0x5eed_0001);
    let mut decoded = 0;
    for case in 0..cases() {
        let body = mutator.input(&corpus);
        for schema in ["1", "2", "3", "4", "5", "6", "", "x\u{7}"] {
            let result = std::panic::catch_unwind(|| Envelope::decode_schema(schema, &body));
            let outcome = result.unwrap_or_else(|_| panic!("case {case} (schema {schema:?}) panicked: {body:?}"));
            decoded += usize::from(outcome.is_ok());
        }
    }
    // Mutations keep some bodies valid: the decoder is exercised past its first byte.
    assert!(decoded > 0);
}
