//! Integration tests of capmesh-plan.

mod examples;
mod plans;
