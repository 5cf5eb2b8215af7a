//! VAL-6 for request bodies: any bytes give a validated chat or an OpenAI-shaped 4xx error, never
//! a panic. The corpus is `tests/corpus/*.json`.

use rbee_bus::fuzz::{Mutator, cases};
use rbee_queen::chat_request;

#[test]
fn mutated_chat_bodies_are_validated_or_refused_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let corpus: Vec<Vec<u8>> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| std::fs::read(e.path()).unwrap()).collect();
    assert!(corpus.len() >= 4);
    let mut mutator = Mutator::new(0x5eed_0002);
    let mut accepted = 0;
    for case in 0..cases() {
        let body = mutator.input(&corpus);
        let result = std::panic::catch_unwind(|| chat_request::parse(&body));
        match result.unwrap_or_else(|_| panic!("case {case} panicked: {:?}", String::from_utf8_lossy(&body))) {
            Ok(_) => accepted += 1,
            Err(e) => assert!(e.code.is_client_error(), "case {case}: {e:?}"),
        }
    }
    assert!(accepted > 0, "some mutations stay valid");
}
