//! Running ONNX models with tract, shared by the realm runtime and the
//! device agent (DESIGN §2: no binary depends on another binary's crate).
//!
//! * [`LoadedModel`]: plaintext ONNX bytes in, an optimised runnable plan
//!   out, with the input facts every request is checked against first.
//! * [`apply`]: shape scores into what a model's output policy allows.
//!
//! Must never: run a tensor its model's input facts do not admit, return
//! more than the output policy allows, or keep the plaintext model bytes it
//! was given (callers own and wipe them).

mod engine;
mod output;

pub use engine::{
    ElementType, InputError, InputSpec, LoadError, LoadedModel, MAX_INPUT_ELEMENTS, RunError,
    Scores, pin_input,
};
pub use output::{OutputError, apply, check_rows};
