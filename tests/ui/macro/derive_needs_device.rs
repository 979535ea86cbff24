// #[derive(Model)] needs the dtype and device as the last type parameters.
#[derive(Clone, typeformer::Model)]
struct Head {
    scale: f64,
}

fn main() {}
