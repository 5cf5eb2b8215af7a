//! Quantized compute kernels for the formats the default model uses, each with a portable
//! reference and a SIMD path chosen at run time.

pub mod candle_q4_1;
pub mod q4_1;
