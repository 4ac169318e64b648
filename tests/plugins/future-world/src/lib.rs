//! A component for `veer:balancer@9.9.9`, which no Veer serves: the host
//! must refuse it and name both its version and the ones it serves.
wit_bindgen::generate!({
    inline: r#"
        package veer:balancer@9.9.9;

        interface types {
            record backend { id: u32 }
        }

        world balancer {
            use types.{backend};
            export select: func(backends: list<backend>) -> u32;
        }
    "#,
});

struct Future;

impl Guest for Future {
    fn select(backends: Vec<Backend>) -> u32 {
        backends.first().map_or(0, |b| b.id)
    }
}

export!(Future);
