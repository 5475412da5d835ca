//! A guard on the wire: what an executor of a distributed engine needs to
//! rebuild it (the guarded function's name, or the guarded node as a
//! DataFusion physical expression over its argument columns).

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Schema};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::{SessionStateDefaults, TaskContext};
use datafusion::logical_expr::ScalarUDF;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::protobuf;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::caps::{Precheck, precheck};
use super::udf::{Body, Guard};

/// What marks a guard's bytes among other functions' definitions.
const TAG: &[u8] = b"cohort.guard/1:";

#[derive(Serialize, Deserialize)]
struct Wire {
    name: String,
    /// `datafusion_proto` ArrowType.
    data_type: Vec<u8>,
    precheck: String,
    /// The guarded function's name, or the guarded node with its schema.
    function: Option<String>,
    template: Option<(Vec<u8>, Vec<u8>)>,
}

/// The guard's bytes, or `None` for any other function.
pub(crate) fn encode(
    udf: &ScalarUDF,
    codec: &dyn PhysicalExtensionCodec,
) -> DfResult<Option<Vec<u8>>> {
    let Some(guard) = udf.inner().downcast_ref::<Guard>() else {
        return Ok(None);
    };
    let data_type: protobuf::ArrowType = guard.data_type().try_into()?;
    let (function, template, check) = match guard.body() {
        Body::Function { inner, precheck } => (Some(inner.name().to_string()), None, *precheck),
        Body::Template {
            expr,
            schema,
            precheck,
        } => {
            let expr = serialize_physical_expr(expr, codec)?.encode_to_vec();
            let schema: protobuf::Schema = schema.as_ref().try_into()?;
            (None, Some((expr, schema.encode_to_vec())), *precheck)
        }
    };
    let wire = Wire {
        name: guard.display_name().to_string(),
        data_type: data_type.encode_to_vec(),
        precheck: precheck_name(check).to_string(),
        function,
        template,
    };
    let mut buf = TAG.to_vec();
    buf.extend(serde_json::to_vec(&wire).map_err(|e| DataFusionError::External(e.into()))?);
    Ok(Some(buf))
}

/// A guard from [`encode`]'s bytes, or `None` for any other bytes.
pub(crate) fn decode(
    buf: &[u8],
    codec: &dyn PhysicalExtensionCodec,
) -> DfResult<Option<Arc<ScalarUDF>>> {
    let Some(body) = buf.strip_prefix(TAG) else {
        return Ok(None);
    };
    let bad = |what: &str| DataFusionError::Plan(format!("a guard on the wire: {what}"));
    let wire: Wire = serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
    let data_type =
        protobuf::ArrowType::decode(wire.data_type.as_slice()).map_err(|e| bad(&e.to_string()))?;
    let data_type: DataType = (&data_type).try_into()?;
    let check = match wire.precheck.as_str() {
        "none" => Precheck::None,
        "sum_of_lengths" => Precheck::SumOfLengths,
        function => precheck(function),
    };
    let body = match (wire.function, wire.template) {
        (Some(name), None) => {
            // Only an allow-listed function of DataFusion's defaults: an
            // executor builds nothing a planner could not have planned.
            let inner = SessionStateDefaults::default_scalar_functions()
                .into_iter()
                .find(|f| {
                    f.name() == name && crate::functions::SCALAR_FUNCTIONS.contains(&f.name())
                })
                .ok_or_else(|| bad(&format!("`{name}` is not an allowed function")))?;
            Body::Function {
                inner,
                precheck: check,
            }
        }
        (None, Some((expr, schema))) => {
            let schema =
                protobuf::Schema::decode(schema.as_slice()).map_err(|e| bad(&e.to_string()))?;
            let schema: Schema = (&schema).try_into()?;
            let expr = protobuf::PhysicalExprNode::decode(expr.as_slice())
                .map_err(|e| bad(&e.to_string()))?;
            let expr = parse_physical_expr(&expr, task_context(), &schema, codec)?;
            Body::Template {
                expr,
                schema: Arc::new(schema),
                precheck: check,
            }
        }
        _ => return Err(bad("neither a function nor a template")),
    };
    Ok(Some(Arc::new(ScalarUDF::new_from_impl(Guard::new(
        wire.name, data_type, body,
    )))))
}

fn precheck_name(check: Precheck) -> &'static str {
    match check {
        Precheck::None => "none",
        Precheck::PadLength => "lpad",
        Precheck::Replace => "replace",
        Precheck::SumOfLengths => "sum_of_lengths",
    }
}

/// DataFusion's default functions, which a guarded node's template may call.
fn task_context() -> &'static TaskContext {
    static CONTEXT: OnceLock<Arc<TaskContext>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| datafusion::prelude::SessionContext::new().task_ctx())
        .as_ref()
}
