//! Streams an ONNX file's protobuf and keeps only what tract needs to type the
//! graph: every field as it is, except large initializers, whose payload is
//! skipped and which come back as graph inputs of the same name, element type
//! and shape. Large `Constant` nodes (how paddle2onnx, for one, stores
//! weights) are treated the same way, their output becoming the input.
//! Validating a multi-GiB model before sealing then costs memory in
//! proportion to its graph, not to its weights.
//!
//! Must never: use a length read from the file before checking it against the
//! bytes left in the enclosing message; recurse (the only nesting followed is
//! the fixed ModelProto → GraphProto → [NodeProto → AttributeProto →]
//! TensorProto path); panic, or allocate without a bound, on any input; let
//! through a large tensor that tract would refuse to load (its payload is
//! counted against its dims the way tract-onnx 0.23 does).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom};

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

const MIB: u64 = 1 << 20;

// Protobuf wire types.
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const SGROUP: u8 = 3;
const EGROUP: u8 = 4;
const I32: u8 = 5;

// Field numbers, from onnx.proto (checked against tract_onnx::pb).
const MODEL_GRAPH: u32 = 7;
const GRAPH_NODE: u32 = 1;
const GRAPH_INITIALIZER: u32 = 5;
const NODE_OP_TYPE: u32 = 4;
const NODE_ATTRIBUTE: u32 = 5;
const ATTRIBUTE_NAME: u32 = 1;
const ATTRIBUTE_T: u32 = 5;
const ATTRIBUTE_TYPE: u32 = 20;
const TENSOR_DIMS: u32 = 1;
const TENSOR_DATA_TYPE: u32 = 2;
const TENSOR_FLOAT_DATA: u32 = 4;
const TENSOR_INT32_DATA: u32 = 5;
const TENSOR_STRING_DATA: u32 = 6;
const TENSOR_INT64_DATA: u32 = 7;
const TENSOR_NAME: u32 = 8;
const TENSOR_RAW_DATA: u32 = 9;
const TENSOR_DOUBLE_DATA: u32 = 10;
const TENSOR_UINT64_DATA: u32 = 11;
const TENSOR_DATA_LOCATION: u32 = 14;

/// Tract supports any rank, but a dims list this long is an attack on memory,
/// not a model.
const MAX_DIMS: usize = 1024;
const MAX_NAME: u64 = 64 * 1024;
/// Below this a skip reads through the buffer; above it a seek avoids reading
/// weights from disk at all.
const SEEK_MIN: u64 = 64 * 1024;

/// How much of the model is kept, and how much is refused outright.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Initializers and `Constant` nodes larger than this (encoded bytes)
    /// become inputs.
    pub big_initializer: u64,
    /// Once the initializers and nodes kept add up to this, any above
    /// `min_convert` become inputs too, so a model made of many medium-sized
    /// weights (int8 layers, say) cannot fill memory.
    pub kept_budget: u64,
    /// Tensors at or below this always stay: they are the shape and axis
    /// tensors that constant folding needs.
    pub min_convert: u64,
    /// Largest single field copied into the slimmed model.
    pub max_field: u64,
    /// Largest slimmed model.
    pub max_slim: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            big_initializer: MIB,
            kept_budget: 64 * MIB,
            min_convert: 64 * 1024,
            max_field: 64 * MIB,
            max_slim: 256 * MIB,
        }
    }
}

/// A model with its large initializers replaced by inputs.
#[derive(Debug)]
pub struct Slimmed {
    /// An ONNX `ModelProto`.
    pub bytes: Vec<u8>,
    /// Names of the initializers and `Constant` outputs now declared as
    /// graph inputs.
    pub converted: Vec<String>,
    /// Encoded bytes of the initializers and nodes left out.
    pub converted_bytes: u64,
}

/// Why a file could not be walked. Offsets are bytes from the file's start.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("reading the model: {0}")]
    Io(#[from] io::Error),
    #[error("the file ends inside a field (byte {at})")]
    Truncated { at: u64 },
    #[error("malformed varint at byte {at}")]
    BadVarint { at: u64 },
    #[error("length {len} at byte {at} runs past the end of its message ({remaining} bytes left)")]
    PastEnd { at: u64, len: u64, remaining: u64 },
    #[error(
        "field {field} at byte {at} is a protobuf group (wire type {wire}), which ONNX never uses"
    )]
    Group { at: u64, field: u64, wire: u8 },
    #[error("invalid protobuf key at byte {at} (field {field}, wire type {wire})")]
    BadKey { at: u64, field: u64, wire: u8 },
    #[error("{what} at byte {at} has wire type {wire}, expected {expected}")]
    WrongWire {
        at: u64,
        what: &'static str,
        wire: u8,
        expected: &'static str,
    },
    #[error(
        "{what} at byte {at} is {len} bytes, over the {cap}-byte limit of streaming validation"
    )]
    TooLarge {
        at: u64,
        what: &'static str,
        len: u64,
        cap: u64,
    },
    #[error("tensor at byte {at} has more than {MAX_DIMS} dims")]
    TooManyDims { at: u64 },
    #[error("initializer {name:?} at byte {at}: {reason}")]
    Initializer {
        at: u64,
        name: String,
        reason: String,
    },
    #[error(
        "node {name:?} ({op}) at byte {at} has a large attribute that validation without \
         loading cannot use: {reason}"
    )]
    Node {
        at: u64,
        name: String,
        op: String,
        reason: String,
    },
    #[error(
        "without its large initializers the model is still over {cap} bytes; \
         the bulk is outside initializers and Constant nodes (other nodes' attributes, \
         functions or training info)"
    )]
    SlimTooLarge { cap: u64 },
    #[error("the model's graph does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

type Result<T> = std::result::Result<T, ScanError>;

/// Walk the `len`-byte ONNX model in `r` and return it without its large
/// initializers (see [`Limits`]).
pub fn slim_model<R: Read + Seek>(r: R, len: u64, limits: &Limits) -> Result<Slimmed> {
    let mut s = Stream { r, pos: 0 };
    let mut out = Vec::new();
    let mut conv = Conversion::default();
    while s.pos < len {
        let at = s.pos;
        let (field, wire) = s.key(len)?;
        if field == MODEL_GRAPH {
            if wire != LEN {
                return Err(ScanError::WrongWire {
                    at,
                    what: "ModelProto.graph",
                    wire,
                    expected: "length-delimited",
                });
            }
            let n = s.len_field(len)?;
            let end = s.pos + n;
            // A message's length prefix must come before it, so the graph is
            // built aside; it is small once the large initializers are out.
            let graph = s.graph(end, limits, &mut conv, out.len() as u64)?;
            put_key(&mut out, field, wire);
            put_varint(&mut out, graph.len() as u64);
            out.extend_from_slice(&graph);
        } else {
            s.copy_field(
                field,
                wire,
                len,
                limits.max_field,
                "ModelProto field",
                &mut out,
            )?;
        }
        if out.len() as u64 > limits.max_slim {
            return Err(ScanError::SlimTooLarge {
                cap: limits.max_slim,
            });
        }
    }
    conv.finish(out)
}

#[derive(Default)]
struct Conversion {
    tensors: Vec<TensorHead>,
    converted_bytes: u64,
    kept_bytes: u64,
}

impl Conversion {
    fn should_convert(&self, len: u64, limits: &Limits) -> bool {
        len > limits.big_initializer
            || (self.kept_bytes >= limits.kept_budget && len > limits.min_convert)
    }

    /// Declare every converted initializer as a graph input. The slimmed
    /// model is small, so decoding it whole is fine.
    fn finish(self, bytes: Vec<u8>) -> Result<Slimmed> {
        if self.tensors.is_empty() {
            return Ok(Slimmed {
                bytes,
                converted: Vec::new(),
                converted_bytes: 0,
            });
        }
        let mut model = pb::ModelProto::decode(&bytes[..])?;
        drop(bytes);
        let graph = model.graph.get_or_insert_with(Default::default);
        let mut inputs: HashMap<String, usize> = graph
            .input
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.clone(), i))
            .collect();
        let mut converted: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for t in self.tensors {
            let ty = Some(pb::TypeProto {
                denotation: String::new(),
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: t.data_type,
                    shape: Some(pb::TensorShapeProto {
                        dim: t
                            .dims
                            .iter()
                            .map(|&d| pb::tensor_shape_proto::Dimension {
                                denotation: String::new(),
                                value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                            })
                            .collect(),
                    }),
                })),
            });
            // Before IR 4 every initializer is also listed as an input; that
            // entry is the one tract will now treat as a source. A repeated
            // name is replaced too, as tract keeps the last initializer.
            match inputs.get(&t.name).and_then(|&i| graph.input.get_mut(i)) {
                Some(existing) => existing.r#type = ty,
                None => {
                    inputs.insert(t.name.clone(), graph.input.len());
                    graph.input.push(pb::ValueInfoProto {
                        name: t.name.clone(),
                        r#type: ty,
                        doc_string: String::new(),
                    });
                }
            }
            if seen.insert(t.name.clone()) {
                converted.push(t.name);
            }
        }
        Ok(Slimmed {
            bytes: model.encode_to_vec(),
            converted,
            converted_bytes: self.converted_bytes,
        })
    }
}

/// What is kept of a large initializer, and the sizes of its payload fields.
#[derive(Debug, Default)]
struct TensorHead {
    name: String,
    data_type: i32,
    dims: Vec<i64>,
    external: bool,
    raw_len: u64,
    int32: u64,
    int64: u64,
    float: u64,
    double: u64,
    string: u64,
}

impl TensorHead {
    /// Mirror tract-onnx 0.23's `load_tensor`: whatever it would refuse to
    /// load is refused here, since the skipped payload is never shown to it.
    fn check(&self) -> std::result::Result<(), String> {
        let mut numel: u64 = 1;
        for &d in &self.dims {
            let d = u64::try_from(d).map_err(|_| format!("negative dimension {d}"))?;
            numel = numel
                .checked_mul(d)
                .ok_or_else(|| format!("shape {:?} overflows", self.dims))?;
        }
        let dt = DataType::try_from(self.data_type)
            .map_err(|_| format!("unknown data type {}", self.data_type))?;
        let name = dt.as_str_name();
        if self.raw_len > 0 {
            let size: u64 = match dt {
                DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
                DataType::Uint16 | DataType::Int16 | DataType::Float16 => 2,
                DataType::Uint32 | DataType::Int32 | DataType::Float => 4,
                DataType::Uint64 | DataType::Int64 | DataType::Double => 8,
                _ => return Err(format!("{name} data cannot be loaded from raw_data")),
            };
            let need = numel
                .checked_mul(size)
                .ok_or_else(|| format!("shape {:?} of {name} is too large", self.dims))?;
            if self.raw_len != need {
                return Err(format!(
                    "raw_data is {} bytes but dims {:?} of {name} need {need}",
                    self.raw_len, self.dims
                ));
            }
            return Ok(());
        }
        if self.external {
            return Err(
                "its data is stored outside the model file (external data), \
                 which a sealed model cannot carry"
                    .into(),
            );
        }
        let (count, field) = match dt {
            DataType::Bool
            | DataType::Uint8
            | DataType::Uint16
            | DataType::Uint32
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Float16 => (self.int32, "int32_data"),
            DataType::Uint64 | DataType::Int64 => (self.int64, "int64_data"),
            DataType::Float => (self.float, "float_data"),
            DataType::Double => (self.double, "double_data"),
            DataType::String => (self.string, "string_data"),
            _ => return Err(format!("{name} tensors cannot be loaded")),
        };
        if count != numel {
            return Err(format!(
                "{field} holds {count} values but dims {:?} need {numel}",
                self.dims
            ));
        }
        Ok(())
    }
}

/// A reader with its position, so every length can be checked against the
/// end of the message it sits in.
struct Stream<R> {
    r: R,
    pos: u64,
}

impl<R: Read + Seek> Stream<R> {
    fn truncated(&self, e: io::Error) -> ScanError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ScanError::Truncated { at: self.pos }
        } else {
            ScanError::Io(e)
        }
    }

    fn byte(&mut self, end: u64) -> Result<u8> {
        if self.pos >= end {
            return Err(ScanError::Truncated { at: self.pos });
        }
        let mut b = [0u8];
        self.r.read_exact(&mut b).map_err(|e| self.truncated(e))?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self, end: u64) -> Result<u64> {
        let at = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte(end)?;
            // The tenth byte holds bit 63 alone; anything more overflows.
            if i == 9 && b > 1 {
                return Err(ScanError::BadVarint { at });
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ScanError::BadVarint { at })
    }

    fn key(&mut self, end: u64) -> Result<(u32, u8)> {
        let at = self.pos;
        let k = self.varint(end)?;
        let field = k >> 3;
        let wire = (k & 7) as u8;
        if wire == SGROUP || wire == EGROUP {
            return Err(ScanError::Group { at, field, wire });
        }
        match u32::try_from(field) {
            Ok(f) if f != 0 && f < (1 << 29) && wire <= I32 => Ok((f, wire)),
            _ => Err(ScanError::BadKey { at, field, wire }),
        }
    }

    /// A length prefix, checked against what is left before `end`.
    fn len_field(&mut self, end: u64) -> Result<u64> {
        let at = self.pos;
        let len = self.varint(end)?;
        let remaining = end - self.pos;
        if len > remaining {
            return Err(ScanError::PastEnd { at, len, remaining });
        }
        Ok(len)
    }

    /// Skip `n` bytes the caller has checked are inside the message.
    fn skip(&mut self, n: u64) -> Result<()> {
        if n >= SEEK_MIN
            && let Ok(off) = i64::try_from(n)
        {
            self.r.seek(SeekFrom::Current(off))?;
            self.pos += n;
            return Ok(());
        }
        let got = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        self.pos += got;
        if got < n {
            return Err(ScanError::Truncated { at: self.pos });
        }
        Ok(())
    }

    /// Append `n` bytes the caller has checked are inside the message and
    /// under its size cap.
    fn copy_to(&mut self, n: u64, out: &mut Vec<u8>) -> Result<()> {
        // Exact, rather than read_to_end's doubling.
        out.reserve(usize::try_from(n).unwrap_or(0));
        let got = (&mut self.r).take(n).read_to_end(out)? as u64;
        self.pos += got;
        if got < n {
            return Err(ScanError::Truncated { at: self.pos });
        }
        Ok(())
    }

    fn fixed_len(&self, wire: u8, end: u64) -> Result<u64> {
        let n = if wire == I64 { 8 } else { 4 };
        if end - self.pos < n {
            return Err(ScanError::Truncated { at: self.pos });
        }
        Ok(n)
    }

    fn skip_value(&mut self, wire: u8, end: u64) -> Result<()> {
        match wire {
            VARINT => self.varint(end).map(drop),
            LEN => {
                let n = self.len_field(end)?;
                self.skip(n)
            }
            _ => {
                let n = self.fixed_len(wire, end)?;
                self.skip(n)
            }
        }
    }

    /// Copy one field (its key already read) into `out`.
    fn copy_field(
        &mut self,
        field: u32,
        wire: u8,
        end: u64,
        cap: u64,
        what: &'static str,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        put_key(out, field, wire);
        match wire {
            VARINT => {
                let v = self.varint(end)?;
                put_varint(out, v);
            }
            LEN => {
                let at = self.pos;
                let len = self.len_field(end)?;
                if len > cap {
                    return Err(ScanError::TooLarge { at, what, len, cap });
                }
                put_varint(out, len);
                self.copy_to(len, out)?;
            }
            _ => {
                let n = self.fixed_len(wire, end)?;
                self.copy_to(n, out)?;
            }
        }
        Ok(())
    }

    /// Copy a GraphProto ending at `end`, converting large initializers.
    fn graph(
        &mut self,
        end: u64,
        limits: &Limits,
        conv: &mut Conversion,
        slim_so_far: u64,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while self.pos < end {
            let (field, wire) = self.key(end)?;
            if field == GRAPH_NODE && wire == LEN {
                let at = self.pos;
                let len = self.len_field(end)?;
                let (node, value) = if conv.should_convert(len, limits) {
                    self.node(self.pos + len, limits)?
                } else {
                    if len > limits.max_field {
                        return Err(ScanError::TooLarge {
                            at,
                            what: "node",
                            len,
                            cap: limits.max_field,
                        });
                    }
                    let mut node = Vec::new();
                    self.copy_to(len, &mut node)?;
                    (node, None)
                };
                match value {
                    Some(value) => {
                        conv.tensors.push(constant_value(&node, value, at)?);
                        conv.converted_bytes += len;
                    }
                    None => {
                        put_key(&mut out, field, wire);
                        put_varint(&mut out, node.len() as u64);
                        out.extend_from_slice(&node);
                        conv.kept_bytes += len;
                    }
                }
            } else if field == GRAPH_INITIALIZER && wire == LEN {
                let at = self.pos;
                let len = self.len_field(end)?;
                if conv.should_convert(len, limits) {
                    let t = self.tensor(self.pos + len)?;
                    t.check().map_err(|reason| ScanError::Initializer {
                        at,
                        name: t.name.clone(),
                        reason,
                    })?;
                    conv.tensors.push(t);
                    conv.converted_bytes += len;
                } else {
                    if len > limits.max_field {
                        return Err(ScanError::TooLarge {
                            at,
                            what: "initializer",
                            len,
                            cap: limits.max_field,
                        });
                    }
                    put_key(&mut out, field, wire);
                    put_varint(&mut out, len);
                    self.copy_to(len, &mut out)?;
                    conv.kept_bytes += len;
                }
            } else {
                self.copy_field(field, wire, end, limits.max_field, "graph field", &mut out)?;
            }
            if slim_so_far + out.len() as u64 > limits.max_slim {
                return Err(ScanError::SlimTooLarge {
                    cap: limits.max_slim,
                });
            }
        }
        Ok(out)
    }

    /// Copy a NodeProto ending at `end`, except for one large attribute if
    /// the node may be a `Constant`: that attribute is returned instead, with
    /// its tensor payload skipped. Serializers write `op_type` before the
    /// attributes, so other nodes' attributes are simply copied.
    fn node(&mut self, end: u64, limits: &Limits) -> Result<(Vec<u8>, Option<AttrScan>)> {
        let mut out = Vec::new();
        let mut is_constant = None;
        let mut scanned: Option<AttrScan> = None;
        while self.pos < end {
            let (field, wire) = self.key(end)?;
            if field == NODE_OP_TYPE && wire == LEN {
                let at = self.pos;
                let n = self.len_field(end)?;
                if n > MAX_NAME {
                    return Err(ScanError::TooLarge {
                        at,
                        what: "node op_type",
                        len: n,
                        cap: MAX_NAME,
                    });
                }
                let mut op = Vec::new();
                self.copy_to(n, &mut op)?;
                is_constant = Some(op == b"Constant");
                put_key(&mut out, field, wire);
                put_varint(&mut out, n);
                out.extend_from_slice(&op);
            } else if field == NODE_ATTRIBUTE
                && wire == LEN
                && is_constant != Some(false)
                && scanned.is_none()
            {
                let at = self.pos;
                let len = self.len_field(end)?;
                if len > limits.min_convert {
                    scanned = Some(self.attribute(self.pos + len, at)?);
                } else {
                    put_key(&mut out, field, wire);
                    put_varint(&mut out, len);
                    self.copy_to(len, &mut out)?;
                }
            } else {
                self.copy_field(field, wire, end, limits.max_field, "node field", &mut out)?;
            }
            if out.len() as u64 > limits.max_slim {
                return Err(ScanError::SlimTooLarge {
                    cap: limits.max_slim,
                });
            }
        }
        Ok((out, scanned))
    }

    /// Read an AttributeProto ending at `end` for what a `Constant`'s
    /// `value` needs: its name, type and tensor (payload skipped).
    fn attribute(&mut self, end: u64, at: u64) -> Result<AttrScan> {
        let mut a = AttrScan {
            at,
            name: Vec::new(),
            ty: 0,
            tensor: None,
            twice: false,
        };
        while self.pos < end {
            let (field, wire) = self.key(end)?;
            match (field, wire) {
                (ATTRIBUTE_NAME, LEN) => {
                    let n = self.len_field(end)?;
                    if n > MAX_NAME {
                        return Err(ScanError::TooLarge {
                            at,
                            what: "attribute name",
                            len: n,
                            cap: MAX_NAME,
                        });
                    }
                    a.name.clear();
                    self.copy_to(n, &mut a.name)?;
                }
                (ATTRIBUTE_TYPE, VARINT) => a.ty = self.varint(end)? as i32,
                (ATTRIBUTE_T, LEN) => {
                    // A message field given twice is merged by protobuf
                    // readers; no real Constant does that, so it is refused.
                    a.twice |= a.tensor.is_some();
                    let n = self.len_field(end)?;
                    a.tensor = Some(self.tensor(self.pos + n)?);
                }
                // Nothing else of an attribute matters to a Constant's value.
                _ => self.skip_value(wire, end)?,
            }
        }
        Ok(a)
    }

    /// Read a TensorProto ending at `end`, keeping its name, type and dims
    /// and only counting its payload.
    fn tensor(&mut self, end: u64) -> Result<TensorHead> {
        let mut t = TensorHead::default();
        while self.pos < end {
            let at = self.pos;
            let (field, wire) = self.key(end)?;
            let expect = |want: &[u8], what: &'static str| {
                if want.contains(&wire) {
                    Ok(())
                } else {
                    Err(ScanError::WrongWire {
                        at,
                        what,
                        wire,
                        expected: match want {
                            [VARINT, LEN] => "varint or packed",
                            [I32, LEN] => "fixed32 or packed",
                            [I64, LEN] => "fixed64 or packed",
                            [VARINT] => "varint",
                            _ => "length-delimited",
                        },
                    })
                }
            };
            match field {
                TENSOR_DIMS => {
                    expect(&[VARINT, LEN], "TensorProto.dims")?;
                    if wire == LEN {
                        let n = self.len_field(end)?;
                        let sub = self.pos + n;
                        while self.pos < sub {
                            let d = self.varint(sub)?;
                            push_dim(&mut t.dims, d, at)?;
                        }
                    } else {
                        let d = self.varint(end)?;
                        push_dim(&mut t.dims, d, at)?;
                    }
                }
                TENSOR_DATA_TYPE => {
                    expect(&[VARINT], "TensorProto.data_type")?;
                    // prost reads an int32 as the low 32 bits of the varint.
                    t.data_type = self.varint(end)? as i32;
                }
                TENSOR_DATA_LOCATION => {
                    expect(&[VARINT], "TensorProto.data_location")?;
                    t.external =
                        self.varint(end)? as i32 == pb::tensor_proto::DataLocation::External as i32;
                }
                TENSOR_NAME => {
                    expect(&[LEN], "TensorProto.name")?;
                    let n = self.len_field(end)?;
                    if n > MAX_NAME {
                        return Err(ScanError::TooLarge {
                            at,
                            what: "initializer name",
                            len: n,
                            cap: MAX_NAME,
                        });
                    }
                    let mut name = Vec::new();
                    self.copy_to(n, &mut name)?;
                    t.name = String::from_utf8(name).map_err(|_| ScanError::Initializer {
                        at,
                        name: String::new(),
                        reason: "its name is not UTF-8".into(),
                    })?;
                }
                TENSOR_RAW_DATA => {
                    expect(&[LEN], "TensorProto.raw_data")?;
                    // A bytes field that appears twice keeps the last value.
                    t.raw_len = self.len_field(end)?;
                    self.skip(t.raw_len)?;
                }
                TENSOR_STRING_DATA => {
                    expect(&[LEN], "TensorProto.string_data")?;
                    t.string += 1;
                    self.skip_value(wire, end)?;
                }
                TENSOR_FLOAT_DATA => {
                    expect(&[I32, LEN], "TensorProto.float_data")?;
                    t.float += self.fixed_values(wire, 4, end, at)?;
                }
                TENSOR_DOUBLE_DATA => {
                    expect(&[I64, LEN], "TensorProto.double_data")?;
                    t.double += self.fixed_values(wire, 8, end, at)?;
                }
                TENSOR_INT32_DATA | TENSOR_INT64_DATA | TENSOR_UINT64_DATA => {
                    expect(&[VARINT, LEN], "TensorProto integer data")?;
                    let n = if wire == LEN {
                        let n = self.len_field(end)?;
                        self.count_varints(n)?
                    } else {
                        self.varint(end)?;
                        1
                    };
                    match field {
                        TENSOR_INT32_DATA => t.int32 += n,
                        TENSOR_INT64_DATA => t.int64 += n,
                        // tract never reads uint64_data; counted to be skipped.
                        _ => {}
                    }
                }
                _ => self.skip_value(wire, end)?,
            }
        }
        Ok(t)
    }

    /// Count (and skip) the values of a fixed-width repeated field.
    fn fixed_values(&mut self, wire: u8, width: u64, end: u64, at: u64) -> Result<u64> {
        if wire != LEN {
            let n = self.fixed_len(wire, end)?;
            self.skip(n)?;
            return Ok(1);
        }
        let n = self.len_field(end)?;
        if n % width != 0 {
            return Err(ScanError::Initializer {
                at,
                name: String::new(),
                reason: format!("packed data of {n} bytes is not a whole number of values"),
            });
        }
        self.skip(n)?;
        Ok(n / width)
    }

    /// Count the varints in the next `n` bytes (checked by the caller),
    /// reading them in small blocks.
    fn count_varints(&mut self, n: u64) -> Result<u64> {
        let at = self.pos;
        let mut buf = [0u8; 8192];
        let mut left = n;
        let mut count = 0u64;
        let mut run = 0u32;
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            let chunk = &mut buf[..k];
            self.r.read_exact(chunk).map_err(|e| self.truncated(e))?;
            for &b in chunk.iter() {
                if b & 0x80 == 0 {
                    if run == 9 && b > 1 {
                        return Err(ScanError::BadVarint { at });
                    }
                    count += 1;
                    run = 0;
                } else {
                    run += 1;
                    if run >= 10 {
                        return Err(ScanError::BadVarint { at });
                    }
                }
            }
            self.pos += k as u64;
            left -= k as u64;
        }
        if run != 0 {
            return Err(ScanError::BadVarint { at });
        }
        Ok(count)
    }
}

/// A large attribute of a node that may be a `Constant`.
#[derive(Debug)]
struct AttrScan {
    at: u64,
    name: Vec<u8>,
    ty: i32,
    tensor: Option<TensorHead>,
    twice: bool,
}

/// The `Constant` node (without its large attribute) in `node`, whose
/// `value` is `attr`, as an input named after the node's output. What
/// tract-onnx 0.23 would load from it is checked here, as it will not see it.
fn constant_value(node: &[u8], attr: AttrScan, at: u64) -> Result<TensorHead> {
    let node = pb::NodeProto::decode(node)?;
    let refuse = |reason: &str| ScanError::Node {
        at,
        name: node.name.clone(),
        op: node.op_type.clone(),
        reason: reason.into(),
    };
    if node.op_type != "Constant" || !node.domain.is_empty() {
        return Err(refuse("only a Constant's value can stand in as an input"));
    }
    let [output] = &node.output[..] else {
        return Err(refuse("a Constant has exactly one output"));
    };
    if !node.attribute.is_empty() || attr.name != b"value" || attr.twice {
        return Err(refuse(
            "a Constant standing in as an input has one `value` tensor",
        ));
    }
    if attr.ty != pb::attribute_proto::AttributeType::Tensor as i32 {
        return Err(refuse("`value` is not of type TENSOR"));
    }
    let Some(mut t) = attr.tensor else {
        return Err(refuse("`value` has no tensor"));
    };
    t.check().map_err(|reason| ScanError::Initializer {
        at: attr.at,
        name: output.clone(),
        reason,
    })?;
    t.name = output.clone();
    Ok(t)
}

fn push_dim(dims: &mut Vec<i64>, d: u64, at: u64) -> Result<()> {
    if dims.len() >= MAX_DIMS {
        return Err(ScanError::TooManyDims { at });
    }
    // prost reads an int64 as the varint's bits.
    dims.push(d as i64);
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;

    use super::*;

    const LOGREG: &[u8] = include_bytes!("../testdata/digits_logreg.onnx");

    fn scan(bytes: &[u8], limits: &Limits) -> Result<Slimmed> {
        slim_model(Cursor::new(bytes), bytes.len() as u64, limits)
    }

    /// Everything that is an initializer becomes an input, so the tensor
    /// walker sees every initializer of a real model.
    fn convert_all() -> Limits {
        Limits {
            big_initializer: 0,
            min_convert: 0,
            ..Limits::default()
        }
    }

    fn key(field: u64, wire: u8) -> Vec<u8> {
        let mut v = Vec::new();
        put_varint(&mut v, (field << 3) | u64::from(wire));
        v
    }

    /// A model with one initializer of each payload encoding tract reads,
    /// wired to nothing (the walker does not care), since the real test model
    /// keeps its weights in node attributes.
    fn sample() -> Vec<u8> {
        let t = |name: &str, dims: Vec<i64>, dt: DataType| pb::TensorProto {
            name: name.into(),
            dims,
            data_type: dt as i32,
            doc_string: "skipped".into(),
            ..Default::default()
        };
        let mut m = pb::ModelProto::decode(LOGREG).unwrap_or_default();
        let g = m.graph.get_or_insert_with(Default::default);
        g.initializer = vec![
            pb::TensorProto {
                raw_data: (0..48).collect(),
                ..t("raw", vec![4, 3], DataType::Float)
            },
            pb::TensorProto {
                float_data: vec![0.5, -1.0, 2.0],
                ..t("floats", vec![3], DataType::Float)
            },
            pb::TensorProto {
                int64_data: vec![-1, 64],
                ..t("shape", vec![2], DataType::Int64)
            },
            pb::TensorProto {
                int32_data: vec![1, 255, 0, 7],
                ..t("bytes", vec![2, 2], DataType::Uint8)
            },
            pb::TensorProto {
                double_data: vec![1e300],
                ..t("scalar", vec![], DataType::Double)
            },
            pb::TensorProto {
                string_data: vec![b"a".to_vec(), b"bc".to_vec()],
                ..t("labels", vec![2], DataType::String)
            },
        ];
        g.node.push(constant_node(
            "const_out",
            pb::TensorProto {
                raw_data: vec![1; 16],
                ..t("", vec![2, 2], DataType::Int32)
            },
        ));
        m.encode_to_vec()
    }

    fn constant_node(output: &str, value: pb::TensorProto) -> pb::NodeProto {
        pb::NodeProto {
            output: vec![output.into()],
            name: format!("make_{output}"),
            op_type: "Constant".into(),
            attribute: vec![pb::AttributeProto {
                name: "value".into(),
                r#type: pb::attribute_proto::AttributeType::Tensor as i32,
                t: Some(value),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn model_with_initializer(t: &pb::TensorProto) -> Vec<u8> {
        pb::ModelProto {
            ir_version: 8,
            graph: Some(pb::GraphProto {
                name: "g".into(),
                initializer: vec![t.clone()],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn overlong_varint_is_refused() {
        let bytes = [0xffu8; 11];
        assert!(matches!(
            scan(&bytes, &Limits::default()),
            Err(ScanError::BadVarint { at: 0 })
        ));
        // Ten bytes whose last carries more than bit 63.
        let mut bytes = vec![0xffu8; 9];
        bytes.push(0x02);
        assert!(matches!(
            scan(&bytes, &Limits::default()),
            Err(ScanError::BadVarint { at: 0 })
        ));
    }

    #[test]
    fn varint_cut_by_the_end_of_file_is_truncated() {
        assert!(matches!(
            scan(&[0x80], &Limits::default()),
            Err(ScanError::Truncated { .. })
        ));
    }

    #[test]
    fn length_past_the_end_is_refused_before_reading() {
        // A graph claiming a terabyte in a six-byte file.
        let mut bytes = key(7, LEN);
        put_varint(&mut bytes, 1 << 40);
        let e = scan(&bytes, &Limits::default()).unwrap_err();
        assert!(matches!(e, ScanError::PastEnd { at: 1, len, remaining: 0 } if len == 1 << 40));
        // Inside the graph, a length is held to the graph's end, not the file's.
        let mut graph = key(2, LEN);
        put_varint(&mut graph, 10);
        let mut bytes = key(7, LEN);
        put_varint(&mut bytes, graph.len() as u64);
        bytes.extend_from_slice(&graph);
        bytes.extend_from_slice(&[0u8; 32]);
        let e = scan(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(
                e,
                ScanError::PastEnd {
                    len: 10,
                    remaining: 0,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn groups_are_refused() {
        for wire in [SGROUP, EGROUP] {
            let e = scan(&key(3, wire), &Limits::default()).unwrap_err();
            assert!(
                matches!(
                    e,
                    ScanError::Group {
                        at: 0,
                        field: 3,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("group"));
        }
        // b"this..." starts with field 14, wire type 4.
        let e = scan(b"this is not a protobuf", &Limits::default()).unwrap_err();
        assert!(matches!(e, ScanError::Group { .. }), "{e}");
    }

    #[test]
    fn bad_keys_are_refused() {
        for bytes in [key(0, VARINT), key(1, 6), key(1, 7), key(1 << 29, VARINT)] {
            let e = scan(&bytes, &Limits::default()).unwrap_err();
            assert!(matches!(e, ScanError::BadKey { at: 0, .. }), "{e}");
        }
        let e = scan(&key(7, VARINT), &Limits::default()).unwrap_err();
        assert!(matches!(e, ScanError::WrongWire { .. }), "{e}");
    }

    #[test]
    fn a_file_shorter_than_its_size_is_truncated() {
        for cut in [1, 10, LOGREG.len() / 2, LOGREG.len() - 1] {
            let e = slim_model(
                Cursor::new(&LOGREG[..cut]),
                LOGREG.len() as u64,
                &convert_all(),
            )
            .unwrap_err();
            assert!(
                matches!(e, ScanError::Truncated { .. }),
                "cut at {cut}: {e}"
            );
        }
    }

    #[test]
    fn every_prefix_is_walked_without_panic() {
        for bytes in [LOGREG.to_vec(), sample()] {
            for cut in 0..bytes.len() {
                let _ = scan(&bytes[..cut], &Limits::default());
                let _ = scan(&bytes[..cut], &convert_all());
            }
        }
    }

    #[test]
    fn oversized_copied_fields_are_refused() {
        let limits = Limits {
            max_field: 100,
            ..Limits::default()
        };
        let mut bytes = key(6, LEN); // ModelProto.doc_string
        put_varint(&mut bytes, 101);
        bytes.extend_from_slice(&[b'x'; 101]);
        let e = scan(&bytes, &limits).unwrap_err();
        assert!(
            matches!(
                e,
                ScanError::TooLarge {
                    len: 101,
                    cap: 100,
                    ..
                }
            ),
            "{e}"
        );
        let limits = Limits {
            max_slim: 100,
            ..Limits::default()
        };
        assert!(matches!(
            scan(&bytes, &limits),
            Err(ScanError::SlimTooLarge { cap: 100 })
        ));
    }

    #[test]
    fn small_models_pass_through_unchanged() {
        let s = scan(LOGREG, &Limits::default()).unwrap();
        assert!(s.converted.is_empty());
        assert_eq!(
            pb::ModelProto::decode(&s.bytes[..]).unwrap(),
            pb::ModelProto::decode(LOGREG).unwrap()
        );
    }

    #[test]
    fn converted_initializers_become_typed_inputs() {
        let bytes = sample();
        let original = pb::ModelProto::decode(&bytes[..]).unwrap();
        let og = original.graph.clone().unwrap_or_default();
        // Nodes come before initializers in the encoding, hence in the inputs.
        let (constants, nodes): (Vec<_>, Vec<_>) = og
            .node
            .iter()
            .cloned()
            .partition(|n| n.op_type == "Constant");
        let mut expected: Vec<(String, &pb::TensorProto)> = constants
            .iter()
            .filter_map(|n| Some((n.output[0].clone(), n.attribute[0].t.as_ref()?)))
            .collect();
        assert_eq!(expected.len(), 1, "the sample has a Constant");
        expected.extend(og.initializer.iter().map(|t| (t.name.clone(), t)));

        let s = scan(&bytes, &convert_all()).unwrap();
        let slim = pb::ModelProto::decode(&s.bytes[..]).unwrap();
        let g = slim.graph.unwrap_or_default();
        assert!(g.initializer.is_empty());
        assert_eq!(g.node, nodes);
        assert_eq!(g.input[..og.input.len()], og.input[..]);
        assert_eq!(g.input.len(), og.input.len() + expected.len());
        for ((name, init), input) in expected.iter().zip(&g.input[og.input.len()..]) {
            assert_eq!(&input.name, name);
            let Some(pb::type_proto::Value::TensorType(t)) =
                input.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                panic!("{name} has no tensor type");
            };
            assert_eq!(t.elem_type, init.data_type);
            let dims: Vec<i64> = t
                .shape
                .iter()
                .flat_map(|s| &s.dim)
                .map(|d| match d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => v,
                    _ => -1,
                })
                .collect();
            assert_eq!(dims, init.dims);
        }
        let names: Vec<String> = expected.into_iter().map(|(n, _)| n).collect();
        assert_eq!(s.converted, names);
    }

    #[test]
    fn only_a_plain_constant_value_stands_in_as_an_input() {
        let value = pb::TensorProto {
            dims: vec![3],
            data_type: DataType::Float as i32,
            float_data: vec![1.0, 2.0, 3.0],
            ..Default::default()
        };
        let with_node = |n: pb::NodeProto| {
            pb::ModelProto {
                graph: Some(pb::GraphProto {
                    node: vec![n],
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let good = constant_node("c", value.clone());
        let s = scan(&with_node(good.clone()), &convert_all()).unwrap();
        assert_eq!(s.converted, ["c"]);

        let mut named_wrong = good.clone();
        named_wrong.attribute[0].name = "sparse_value".into();
        let mut two_outputs = good.clone();
        two_outputs.output.push("d".into());
        let mut bad_payload = good.clone();
        if let Some(t) = bad_payload.attribute[0].t.as_mut() {
            t.dims = vec![4];
        }
        for n in [named_wrong, two_outputs, bad_payload] {
            let e = scan(&with_node(n), &convert_all()).unwrap_err();
            assert!(
                matches!(e, ScanError::Node { .. } | ScanError::Initializer { .. }),
                "{e}"
            );
        }

        // op_type after the attributes: the attribute is read before the
        // node is known not to be a Constant, and cannot be given back.
        let mut node = Vec::new();
        let attr = pb::AttributeProto {
            name: "value".into(),
            r#type: pb::attribute_proto::AttributeType::Tensor as i32,
            t: Some(value),
            ..Default::default()
        }
        .encode_to_vec();
        node.extend(key(5, LEN));
        put_varint(&mut node, attr.len() as u64);
        node.extend(&attr);
        node.extend(key(4, LEN));
        put_varint(&mut node, 6);
        node.extend(b"Conv2D");
        let mut graph = key(1, LEN);
        put_varint(&mut graph, node.len() as u64);
        graph.extend(&node);
        let mut bytes = key(7, LEN);
        put_varint(&mut bytes, graph.len() as u64);
        bytes.extend(&graph);
        let e = scan(&bytes, &convert_all()).unwrap_err();
        assert!(
            matches!(&e, ScanError::Node { op, .. } if op == "Conv2D"),
            "{e}"
        );
        // With the usual order the same node is copied whole.
        let conv = pb::NodeProto {
            op_type: "Conv2D".into(),
            ..pb::NodeProto::decode(&node[..]).unwrap()
        };
        let s = scan(&with_node(conv.clone()), &convert_all()).unwrap();
        let g = pb::ModelProto::decode(&s.bytes[..])
            .unwrap()
            .graph
            .unwrap_or_default();
        assert_eq!(g.node, [conv]);
    }

    #[test]
    fn an_initializer_listed_as_input_is_retyped_not_duplicated() {
        let t = pb::TensorProto {
            name: "w".into(),
            dims: vec![2, 3],
            data_type: DataType::Float as i32,
            float_data: vec![0.0; 6],
            ..Default::default()
        };
        let mut m = pb::ModelProto::decode(&model_with_initializer(&t)[..]).unwrap();
        if let Some(g) = m.graph.as_mut() {
            g.input.push(pb::ValueInfoProto {
                name: "w".into(),
                ..Default::default()
            });
        }
        let s = scan(&m.encode_to_vec(), &convert_all()).unwrap();
        let g = pb::ModelProto::decode(&s.bytes[..])
            .unwrap()
            .graph
            .unwrap_or_default();
        assert_eq!(g.input.len(), 1);
        assert!(g.input[0].r#type.is_some());
        assert_eq!(s.converted, ["w"], "so the summary leaves it out");
    }

    #[test]
    fn payload_must_match_dims_as_tract_requires() {
        let good = pb::TensorProto {
            name: "w".into(),
            dims: vec![4, 2],
            data_type: DataType::Float as i32,
            raw_data: vec![0; 32],
            ..Default::default()
        };
        assert!(scan(&model_with_initializer(&good), &convert_all()).is_ok());
        let packed = pb::TensorProto {
            raw_data: vec![],
            float_data: vec![1.0; 8],
            ..good.clone()
        };
        assert!(scan(&model_with_initializer(&packed), &convert_all()).is_ok());
        let ints = pb::TensorProto {
            raw_data: vec![],
            data_type: DataType::Int64 as i32,
            int64_data: vec![-1, 1 << 40, 0, 5, 6, 7, 8, i64::MIN],
            ..good.clone()
        };
        assert!(scan(&model_with_initializer(&ints), &convert_all()).is_ok());

        let bad = [
            pb::TensorProto {
                raw_data: vec![0; 31],
                ..good.clone()
            },
            pb::TensorProto {
                dims: vec![-4, -2],
                ..good.clone()
            },
            pb::TensorProto {
                dims: vec![1 << 40, 1 << 40],
                ..good.clone()
            },
            pb::TensorProto {
                data_type: 9999,
                ..good.clone()
            },
            pb::TensorProto {
                data_type: DataType::String as i32,
                ..good.clone()
            },
            pb::TensorProto {
                float_data: vec![1.0; 7],
                ..packed.clone()
            },
            pb::TensorProto {
                int64_data: vec![1; 9],
                ..ints.clone()
            },
            pb::TensorProto {
                raw_data: vec![],
                data_location: Some(pb::tensor_proto::DataLocation::External as i32),
                ..good.clone()
            },
        ];
        for t in bad {
            let e = scan(&model_with_initializer(&t), &convert_all()).unwrap_err();
            assert!(
                matches!(&e, ScanError::Initializer { name, .. } if name == "w"),
                "{e}"
            );
        }
        let many = pb::TensorProto {
            dims: vec![1; MAX_DIMS + 1],
            ..good.clone()
        };
        let e = scan(&model_with_initializer(&many), &convert_all()).unwrap_err();
        assert!(matches!(e, ScanError::TooManyDims { .. }), "{e}");
    }

    #[test]
    fn kept_budget_converts_medium_initializers_once_spent() {
        let t = |name: &str| pb::TensorProto {
            name: name.into(),
            dims: vec![1000],
            data_type: DataType::Uint8 as i32,
            raw_data: vec![7; 1000],
            ..Default::default()
        };
        let model = pb::ModelProto {
            graph: Some(pb::GraphProto {
                initializer: vec![t("a"), t("b"), t("c")],
                ..Default::default()
            }),
            ..Default::default()
        };
        let limits = Limits {
            big_initializer: 10_000,
            kept_budget: 1500,
            min_convert: 100,
            ..Limits::default()
        };
        let s = scan(&model.encode_to_vec(), &limits).unwrap();
        assert_eq!(s.converted, ["c"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = scan(&bytes, &Limits::default());
            let _ = scan(&bytes, &convert_all());
        }

        #[test]
        fn damaged_models_never_panic(
            sampled in any::<bool>(),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..4),
            claimed_extra in 0u64..3,
        ) {
            let mut bytes = if sampled { sample() } else { LOGREG.to_vec() };
            for (at, bit) in flips {
                let at = at.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            // Mostly whole files, so the flips are what gets exercised.
            let keep = cut.index(bytes.len() * 2 + 1).min(bytes.len());
            bytes.truncate(keep);
            let len = bytes.len() as u64 + claimed_extra;
            for limits in [Limits::default(), convert_all()] {
                let _ = slim_model(Cursor::new(&bytes), len, &limits);
            }
        }
    }
}
